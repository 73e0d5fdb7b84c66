"""Model-free evaluation metrics: style fidelity, distinguishability, memorisation, confidence intervals.

A "reply" is one persona turn as its list of messages (bubbles), the shape `decode.batch.decode_many` returns and
`template.split_bubbles` gives for a real turn. Every style feature turns a set of replies into a categorical
distribution; two sets are compared with the Jensen–Shannon distance (base 2, so 0 = identical, 1 = disjoint).
The summary style distance is the mean over features. Used by `talkalike eval` (evaluate.py) and tune-generation.

    from talkalike.evaluate.metrics import style_distance
    style_distance([["haha ok", "see u"]], [["hahaha sure"]])
"""

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

from talkalike.message import EMOJI_RE, LAUGHTER

Reply = list[str]  # one persona turn: its messages (bubbles) in order

PUNCTUATION = ".,!?…-:;'\"()"
HEBREW_RE = re.compile("[\u0590-\u05FF]")
LATIN_RE = re.compile("[A-Za-z\u00C0-\u024F]")
WORD_RE = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")
LENGTH_BINS = (2, 5, 10, 20, 40, 80, 160)  # message length in characters, doubling: short bursts vs long sentences
BUBBLE_BINS = 5  # "5+" messages per turn


def _length_bin(n: int) -> str:
    low = 1
    for high in LENGTH_BINS:
        if n <= high:
            return f"{low}-{high}"
        low = high + 1
    return f"{low}+"


def _script(text: str) -> str:
    """Which alphabet a message is written in: hebrew, latin, mixed, other or none (emoji and punctuation only)."""
    hebrew = bool(HEBREW_RE.search(text))
    latin = bool(LATIN_RE.search(text))
    other = any(ch.isalpha() and not HEBREW_RE.match(ch) and not LATIN_RE.match(ch) for ch in text)
    kinds = [name for name, present in (("hebrew", hebrew), ("latin", latin), ("other", other)) if present]
    if not kinds:
        return "none"
    return kinds[0] if len(kinds) == 1 else "mixed"


def _capitalisation(text: str) -> str:
    """Upper/lower first cased letter, ALL CAPS, or uncased (Hebrew, emoji)."""
    cased = [ch for ch in text if ch.isalpha() and ch.upper() != ch.lower()]
    if not cased:
        return "uncased"
    if len(cased) >= 4 and all(ch.isupper() for ch in cased):
        return "all caps"
    return "upper first" if cased[0].isupper() else "lower first"


def _ending(text: str) -> str:
    """What a message ends with: its final punctuation mark, an emoji, or nothing (a letter or digit)."""
    stripped = text.rstrip()
    if not stripped:
        return "empty"
    if stripped.endswith("...") or stripped.endswith("…"):
        return "…"
    if any(match.end() == len(stripped) for match in EMOJI_RE.finditer(stripped)):
        return "emoji"
    last = stripped[-1]
    if last in ".!?,":
        return last
    return "none" if last.isalnum() else "other"


def _messages(replies: Iterable[Reply]) -> list[str]:
    return [message for reply in replies for message in reply]


def words(text: str) -> list[str]:
    """Lower-cased words in any alphabet (digits and punctuation dropped)."""
    return [w.lower() for w in WORD_RE.findall(text)]


def _per_message(fn: Callable[[str], str]) -> Callable[[list[Reply]], Counter]:
    return lambda replies: Counter(fn(m) for m in _messages(replies))


def _bubbles(replies: list[Reply]) -> Counter:
    return Counter(str(min(len(r), BUBBLE_BINS)) + ("+" if len(r) >= BUBBLE_BINS else "") for r in replies)


def _emoji_presence(replies: list[Reply]) -> Counter:
    return Counter("emoji" if EMOJI_RE.search(m) else "no emoji" for m in _messages(replies))


def _which_emoji(replies: list[Reply]) -> Counter:
    return Counter(e for m in _messages(replies) for e in EMOJI_RE.findall(m))


def _laughter(replies: list[Reply]) -> Counter:
    counts = Counter()
    for message in _messages(replies):
        kinds = [name for name, pattern in LAUGHTER.items() if pattern.search(message)]
        counts.update(kinds or ["none"])
    return counts


def _punctuation(replies: list[Reply]) -> Counter:
    counts = Counter()
    for message in _messages(replies):
        marks = [ch for ch in message.replace("...", "…") if ch in PUNCTUATION]
        counts.update(marks or ["none"])
    return counts


def _vocabulary(replies: list[Reply]) -> Counter:
    return Counter(w for m in _messages(replies) for w in words(m))


# feature name -> function from a set of replies to counts per category. A dict literal is the registry.
FEATURES: dict[str, Callable[[list[Reply]], Counter]] = {
    "message length": _per_message(lambda m: _length_bin(len(m))),
    "messages per turn": _bubbles,
    "emoji rate": _emoji_presence,
    "which emoji": _which_emoji,
    "laughter": _laughter,
    "punctuation": _punctuation,
    "message ending": _per_message(_ending),
    "capitalisation": _per_message(_capitalisation),
    "language mix": _per_message(_script),
    "vocabulary": _vocabulary,
}


def distribution(counts: Mapping[str, float]) -> dict[str, float]:
    """Counts normalised to probabilities (an empty mapping stays empty)."""
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items() if v} if total else {}


def js_distance(p: Mapping[str, float], q: Mapping[str, float]) -> float:
    """Jensen–Shannon distance (base 2) between two count or probability mappings; in [0, 1].

    Two empty mappings (neither set shows the feature, e.g. no emoji at all) are identical: 0. One empty and one
    not is as far apart as it gets: 1.
    """
    p, q = distribution(p), distribution(q)
    if not p and not q:
        return 0.0
    if not p or not q:
        return 1.0
    divergence = 0.0
    for key in set(p) | set(q):
        a, b = p.get(key, 0.0), q.get(key, 0.0)
        m = (a + b) / 2
        if a:
            divergence += 0.5 * a * math.log2(a / m)
        if b:
            divergence += 0.5 * b * math.log2(b / m)
    return math.sqrt(max(0.0, min(1.0, divergence)))


def profile(replies: list[Reply]) -> dict[str, Counter]:
    """Every feature's counts for one set of replies."""
    return {name: fn(replies) for name, fn in FEATURES.items()}


def style_distances(generated: list[Reply], real: list[Reply]) -> dict[str, float]:
    """Jensen–Shannon distance to the real replies, per feature."""
    a, b = profile(generated), profile(real)
    return {name: js_distance(a[name], b[name]) for name in FEATURES}


def style_distance(generated: list[Reply], real: list[Reply]) -> float:
    """One number: the mean Jensen–Shannon distance over all features (0 = same style, 1 = nothing in common)."""
    per_feature = style_distances(generated, real)
    return sum(per_feature.values()) / len(per_feature)


def summary(replies: list[Reply]) -> dict[str, float]:
    """Readable scalars for one set: mean message length, messages per turn, emoji/laughter/language shares."""
    messages = _messages(replies)
    n = max(len(messages), 1)
    scripts = Counter(_script(m) for m in messages)
    return {
        "turns": len(replies),
        "messages": len(messages),
        "mean message length": sum(len(m) for m in messages) / n,
        "messages per turn": len(messages) / max(len(replies), 1),
        "emoji per message": sum(len(EMOJI_RE.findall(m)) for m in messages) / n,
        "laughter share": sum(any(p.search(m) for p in LAUGHTER.values()) for m in messages) / n,
        "question share": sum("?" in m for m in messages) / n,
        "hebrew share": (scripts["hebrew"] + scripts["mixed"]) / n,
        "latin share": (scripts["latin"] + scripts["mixed"]) / n,
        "repeated 3-gram share": repeated_trigram_share(replies),
    }


def repeats_a_trigram(reply: Reply) -> bool:
    """Whether some run of 3 words (whitespace tokens, case-blind, across the turn's messages) occurs twice in it:
    the loop a small model falls into ("ok ok ok ok", the same sentence sent twice)."""
    tokens = " ".join(reply).lower().split()
    grams = [tuple(tokens[i: i + 3]) for i in range(len(tokens) - 2)]
    return len(set(grams)) < len(grams)


def repeated_trigram_share(replies: list[Reply]) -> float:
    """The share of replies that repeat a 3-word run inside themselves."""
    return sum(map(repeats_a_trigram, replies)) / len(replies) if replies else 0.0


def _share(test: Callable[[str], bool]) -> Callable[[list[Reply]], float]:
    def share(replies: list[Reply]) -> float:
        messages = _messages(replies)
        return sum(map(test, messages)) / len(messages) if messages else 0.0

    return share


def _percent(value: float) -> str:
    return f"{value:.0%}"


# Plain-words style measures for the headline: name -> (value of a set of replies, floor, format). The floor keeps
# rare features from topping the list: 0 % vs 3 % emoji is a relative gap of 1 but few readers would notice it,
# so differences are taken relative to max(generated, persona, floor): shares below 10 % count as rare.
GAP_MEASURES: dict[str, tuple[Callable[[list[Reply]], float], float, Callable[[float], str]]] = {
    "Hebrew messages": (_share(lambda m: bool(HEBREW_RE.search(m))), 0.1, _percent),
    "messages per turn": (lambda replies: len(_messages(replies)) / max(len(replies), 1), 1.0, "{:.1f}".format),
    "messages with an emoji": (_share(lambda m: bool(EMOJI_RE.search(m))), 0.1, _percent),
    "replies repeating a 3-word run": (repeated_trigram_share, 0.1, _percent),
    "messages with laughter": (_share(lambda m: any(p.search(m) for p in LAUGHTER.values())), 0.1, _percent),
    "characters a message": (lambda replies: sum(map(len, _messages(replies))) / max(len(_messages(replies)), 1),
                             10.0, "{:.0f}".format),
}


def style_gaps(real: list[Reply], generated: list[Reply], label: str = "tuned") -> list[dict]:
    """The plain-words style measures, furthest from the persona first (by relative difference), each with a
    readable "measure tuned X vs persona Y"."""
    gaps = []
    for measure, (value, floor, fmt) in GAP_MEASURES.items():
        mine, persona = value(generated), value(real)
        gaps.append({
            "measure": measure,
            "generated": mine,
            "persona": persona,
            "relative difference": abs(mine - persona) / max(abs(mine), abs(persona), floor),
            "text": f"{measure} {label} {fmt(mine)} vs persona {fmt(persona)}",
        })
    return sorted(gaps, key=lambda g: -g["relative difference"])


def vocabulary_overlap(generated: list[Reply], real: list[Reply]) -> dict[str, float]:
    """How much of the generated words the persona uses: token share in the real vocabulary, and vocabulary Jaccard."""
    gen, ref = _vocabulary(generated), _vocabulary(real)
    total = sum(gen.values())
    covered = sum(count for word, count in gen.items() if word in ref)
    union = set(gen) | set(ref)
    return {
        "token share in real vocabulary": covered / total if total else 0.0,
        "vocabulary jaccard": len(set(gen) & set(ref)) / len(union) if union else 1.0,
    }


def style_report(sets: Mapping[str, list[Reply]], reference: str = "real") -> dict:
    """Per set: feature distributions, summary scalars, per-feature distance to the reference and the mean distance."""
    real = sets[reference]
    report = {"features": list(FEATURES), "reference": reference, "sets": {}}
    for name, replies in sets.items():
        per_feature = style_distances(replies, real)
        dists = {feature: distribution(counts) for feature, counts in profile(replies).items()}
        # the vocabulary and emoji distributions are long-tailed: keep the most common entries for the report
        for feature in ("vocabulary", "which emoji"):
            dists[feature] = dict(sorted(dists[feature].items(), key=lambda kv: -kv[1])[:20])
        report["sets"][name] = {
            "summary": summary(replies),
            "distributions": dists,
            "distance": per_feature,
            "style distance": sum(per_feature.values()) / len(per_feature),
            "vocabulary overlap": vocabulary_overlap(replies, real),
        }
    return report


# --- memorisation -----------------------------------------------------------------------------------------------

COPY_WORDS = 8  # an 8-word run shared with a training reply is a copy, not a common phrase
COPY_CHARS = 40  # likewise a 40-character run (catches numbers, links and words-free text)


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def shingles(text: str, n_words: int = COPY_WORDS, n_chars: int = COPY_CHARS) -> set:
    """Word n-grams (tuples) and character n-grams (strings) of a whitespace- and case-normalised text."""
    norm = _normalise(text)
    tokens = norm.split()
    grams: set = {tuple(tokens[i : i + n_words]) for i in range(len(tokens) - n_words + 1)}
    grams.update(norm[i : i + n_chars] for i in range(len(norm) - n_chars + 1))
    return grams


class CopyIndex:
    """The training replies' long shingles, to tell whether a reply copies one of them verbatim."""

    def __init__(self, training_texts: Iterable[str], n_words: int = COPY_WORDS, n_chars: int = COPY_CHARS):
        self.n_words, self.n_chars = n_words, n_chars
        self.grams: set = set()
        for text in training_texts:
            self.grams |= shingles(text, n_words, n_chars)

    def copies(self, text: str) -> bool:
        """True if the text shares a long word or character run with any training reply."""
        return not self.grams.isdisjoint(shingles(text, self.n_words, self.n_chars))

    def copy_rate(self, texts: list[str]) -> float:
        """The share of texts that copy a training reply."""
        return sum(self.copies(t) for t in texts) / len(texts) if texts else 0.0


# --- distinguishability (scikit-learn, imported lazily) -----------------------------------------------------------


def _char_ngram_classifier(seed: int = 0):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    # char_wb 1-4-grams see emoji, laughter, punctuation and casing habits, in any alphabet, without a word tokenizer
    return make_pipeline(
        TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4), lowercase=False, sublinear_tf=True, min_df=1),
        LogisticRegression(max_iter=2000, C=4.0, class_weight="balanced", random_state=seed),
    )


def train_persona_classifier(persona: list[str], others: list[str], seed: int = 0):
    """A char n-gram TF-IDF + logistic regression pipeline telling the persona's turns (1) from others' (0)."""
    if not persona or not others:
        raise ValueError("the persona classifier needs turns from the persona and from other speakers")
    classifier = _char_ngram_classifier(seed)
    classifier.fit(persona + others, [1] * len(persona) + [0] * len(others))
    return classifier


def persona_rate(classifier, texts: list[str]) -> float:
    """The share of texts the classifier attributes to the persona."""
    if not texts:
        return 0.0
    return float(sum(classifier.predict(texts)) / len(texts))


def _real_vs_generated_scores(real: list[str], generated: list[str], folds: int, seed: int):
    """Labels (1 = real) and out-of-fold probabilities of "real" from a cross-validated char n-gram classifier."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    folds = min(folds, len(real), len(generated))
    if folds < 2:
        raise ValueError("need at least 2 real and 2 generated replies to cross-validate a real-vs-generated classifier")
    texts = real + generated
    labels = [1] * len(real) + [0] * len(generated)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_val_predict(_char_ngram_classifier(seed), texts, labels, cv=splitter, method="predict_proba")
    return labels, scores[:, 1]


def real_vs_generated_auc(real: list[str], generated: list[str], folds: int = 5, seed: int = 0) -> float:
    """Cross-validated ROC AUC of a classifier telling real replies from generated ones (0.5 = indistinguishable)."""
    from sklearn.metrics import roc_auc_score

    labels, scores = _real_vs_generated_scores(real, generated, folds, seed)
    return float(roc_auc_score(labels, scores))


def equal_error_rate(labels: list[int], scores) -> float:
    """Where the ROC curve's miss rate equals its false-alarm rate: the share of items a classifier gets wrong at the
    threshold that errs as often on either class (0 = separable, 0.5 = no better than a coin)."""
    from sklearn.metrics import roc_curve

    false_alarm, hit, _ = roc_curve(labels, scores)
    gap = (1 - hit) - false_alarm  # misses minus false alarms: 1 at the strictest threshold, -1 at the loosest
    i = next(k for k, g in enumerate(gap) if g <= 0)
    if i == 0:
        return float(false_alarm[0])
    # linear interpolation between the two ROC points around the crossing
    t = gap[i - 1] / (gap[i - 1] - gap[i])
    return float(false_alarm[i - 1] + t * (false_alarm[i] - false_alarm[i - 1]))


def fooled_rate_at_equal_error(real: list[str], generated: list[str], folds: int = 5, seed: int = 0) -> float:
    """The equal-error rate of the real-vs-generated classifier (the one behind real_vs_generated_auc): how often
    it mistakes a reply for the other kind when it errs equally on both; 0.5 = the twin is indistinguishable."""
    labels, scores = _real_vs_generated_scores(real, generated, folds, seed)
    return equal_error_rate(labels, scores)


# --- confidence intervals ---------------------------------------------------------------------------------------


def wilson_interval(successes: int, trials: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95 % by default); (0, 1) with no trials."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)
