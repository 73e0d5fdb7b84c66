"""report.html renders every section, self-contained (inline PNGs only), right-to-left aware; it opens with a plain
verdict, writes shares as percentages, groups the canary test by context, never shows the bubble separator, and fits
a phone's width (checked in headless Chromium, as tests/frontends/test_web.py does)."""

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from talkalike.evaluate import abtest, evaluate, metrics, report
from talkalike.template import BUBBLE_MARK, join_bubbles

REAL = [["haha ok", "see u 😂"], ["חחח יאללה"], ["lol no way"], ["sure", "8?"]]
TUNED = [["haha sure"], ["יאללה 😂"], ["lol ok"], ["ok", "where?"]]
BASE = [["Hello, I am fine, thank you."], ["What do you mean by that?"], ["I do not know."], ["Sure."]]
# A base model nearly as close as the twin: ties on some features, closer on one, so the count is neither 0 nor all.
NEAR_BASE = [["haha ok", "see u 😂"], ["חחח"], ["Lol no."], ["Sure."]]
MIXED = "ים? sunset at gordon?"  # a Hebrew-first bubble with English in it: right-to-left as a whole
LINES = "on my way\nאני בדרך ok"  # one bubble, an English line then a Hebrew one: each line takes its own direction
# The history before each sample: the contact line, and turns as the dataset stores them (bubbles joined by the mark).
CONTEXT = [{"role": "system", "content": "Noa is texting with Daniel."},
           {"role": "assistant", "content": join_bubbles([MIXED, "see u there"])},
           {"role": "user", "content": join_bubbles(["are you coming?", "we leave at 8", LINES])}]
SECRETS = ["050-234-5678", "+44 7700 123456", "noa@example.com"]
# Two training contexts where a secret was written; leak_check checks every secret against each context's replies.
CANARY_CONTEXTS = [("what is your number?", join_bubbles(["😍", "my new number btw [PHONE_1] 📱", "הקורקינט מת"]),
                    ["its [PHONE_1]", "haha"]),
                   ("", join_bubbles(["send the tickets to [EMAIL_1] 🙏"]), ["ok", "sent"])]


def _result(run_dir, following: bool = False, base: list = BASE) -> dict:
    """An eval.json by hand; with `following`, also the conversation-following measures and the facts probe."""
    texts = {name: ["\n".join(r) for r in replies] for name, replies in (("real", REAL), ("tuned", TUNED), ("base", base))}
    index = metrics.CopyIndex(["we should totally go to the beach on saturday morning with pita"])
    result = {
        "run": "noa-run",
        "persona": "Noa",
        "generation": {"memories": 3},
        "base": {"id": "gemma-3-270m"},
        "held-out turns": 4,
        "perplexity": {"tuned": {"perplexity": 12.5, "nll per token": 2.53, "tokens": 40},
                       "base": {"perplexity": 48.1, "nll per token": 3.87, "tokens": 40}},
        "style": metrics.style_report({"real": REAL, "tuned": TUNED, "base": base}),
        "style gaps": {"tuned": metrics.style_gaps(REAL, TUNED), "base": metrics.style_gaps(REAL, base, "base")},
        "persona classification": {"rate": {"real": 0.9, "tuned": 0.75, "base": 0.25, "other speakers (held out)": 0.1},
                                   "trained on": {"persona turns": 100, "other turns": 90}},
        "real vs generated auc": {"tuned": 0.62, "base": 0.97},
        "memorisation": {name: {"copy rate": index.copy_rate(t), "copies": 0} for name, t in texts.items()},
        "canaries": {"pseudonymised": True, "secrets": SECRETS, "leaked": [],
                     "results": [{"secret": secret, "planted as": "placeholder", "training reply": reply,
                                  "context": context, "leaked": False, "leaks": 0, "tries": 4, "outputs": outputs}
                                 for context, reply, outputs in CANARY_CONTEXTS for secret in SECRETS]},
        "samples": [{"context": CONTEXT, "real": r, "tuned": t, "base": b} for r, t, b in zip(REAL, TUNED, BASE, strict=True)],
        "ab": abtest.results(run_dir),
    }
    if following:
        result["next-reply ranking"] = {m: {"r@1": r, "n": 40, "chance": 0.1, "interval": [r - 0.1, r + 0.1]}
                                        for m, r in (("tuned", 0.3), ("base", 0.125))}
        result["context identification"] = {m: {"rate": r, "n": 40, "chance": 0.1} for m, r in
                                            (("tuned", 0.2), ("base", 0.1), ("real", 0.5))}
        result["context identification"].update({"tuned share of real": 0.4, "base share of real": 0.2})
        result["fooled rate at equal error"] = {"tuned": 0.18, "base": 0.04}
        result["facts"] = {"file": "/x/noa.facts.jsonl",
                           **{m: _probe(m) for m in ("tuned", "base", "base without memory")}}
        result["facts"]["base without memory"]["recalled"] = 0.25
    result["headline"] = evaluate.headline(result)
    return result


def _probe(model: str) -> dict:
    """What facts.probe returns for two questions: the tuned twin knows the cat (in a sampled reply), base nothing."""
    tuned = model == "tuned"
    return {"facts": 2, "samples": 4, "recalled": 0.5 if tuned else 0.0, "greedy recalled": 0.0, "interval": [0.1, 0.9],
            "results": [{"question": "what's your cat called again?", "answers": ["Pita"], "topic": "pet",
                         "replies": ["idk", "pita!" if tuned else "a cat?", "x", "y"], "hit": tuned,
                         "greedy hit": False},
                        {"question": "איפה את גרה?", "answers": ["פלורנטין"], "topic": "home",
                         "replies": ["ביפו", "x", "y", "z"], "hit": False, "greedy hit": False}]}


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sections, self.images, self.links, self.auto_dir, self.text = [], [], [], [], []
        self.bubbles, self.metas, self.tables = [], [], []  # tables: (section, rows, inside a scrolling box)
        self.scrolling = 0  # how many open <div class="scroll"> enclose the current tag
        self.divs = []  # per open <div>: whether it is a scrolling box
        self.verdicts = []  # the text of each <p class="verdict">
        self._verdict = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if tag == "section":
            self.sections.append(attrs.get("id"))
        if tag == "meta":
            self.metas.append(attrs)
        if tag == "div":
            self.divs.append("scroll" in classes)
            self.scrolling += "scroll" in classes
        if tag == "table":
            self.tables.append([self.sections[-1] if self.sections else None, 0, self.scrolling > 0])
        if tag == "tr":
            self.tables[-1][1] += 1
        if "bubble" in classes:
            self.bubbles.append(attrs)
        if tag == "p" and "verdict" in classes:
            self._verdict = []
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        for key in ("src", "href"):
            if key in attrs and tag != "img":
                self.links.append(attrs[key])
        if attrs.get("dir") == "auto":
            self.auto_dir.append(tag)

    def handle_endtag(self, tag):
        if tag == "div":
            self.scrolling -= self.divs.pop()
        if tag == "p" and self._verdict is not None:
            self.verdicts.append("".join(self._verdict))
            self._verdict = None

    def handle_data(self, data):
        self.text.append(data)
        if self._verdict is not None:
            self._verdict.append(data)


def _parse(path) -> _Collector:
    collector = _Collector()
    collector.feed(path.read_text(encoding="utf-8"))
    return collector


def test_the_report_has_every_section_with_inline_plots_and_no_external_assets(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 3 - s / 10}) + "\n" for s in range(10))
                                            + json.dumps({"step": 9, "eval_loss": 2.4}) + "\n")
    path = report.write_report(tmp_path, _result(tmp_path))
    page = _parse(path)
    assert page.sections == list(report.SECTIONS)
    assert "No facts probe" in "".join(page.text)
    # loss curves, perplexity, style distances, style distributions, persona rates: five inline PNGs
    assert len(page.images) == 5 and all(src.startswith("data:image/png;base64,") for src in page.images)
    assert page.links == []  # nothing to fetch: opens offline
    text = "".join(page.text)
    assert "חחח יאללה" in text and "Hello, I am fine" in text and "[PHONE_1]" in text
    assert "No answers yet" in text
    assert page.auto_dir.count("span") >= 3 * len(REAL)  # every bubble picks its own direction
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "report.html"]  # no temporary file left


def test_the_report_shows_the_fooled_rate_with_its_interval_once_friends_answered(tmp_path):
    answers = [{"pair": "p", "fooled": i < 3, "rater": "Maya" if i % 2 else "Avi"} for i in range(12)]
    (tmp_path / "ab").mkdir()
    (tmp_path / "ab" / "answers.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers))
    page = _parse(report.write_report(tmp_path, _result(tmp_path)))
    text = "".join(page.text)
    low, high = metrics.wilson_interval(3, 12)
    assert "Fooled rate: 25%" in text and f"{low:.0%}–{high:.0%}" in text and "Maya" in text


def test_a_run_without_training_metrics_still_renders(tmp_path):
    page = _parse(report.write_report(tmp_path, _result(tmp_path)))
    assert page.sections == list(report.SECTIONS)
    assert "No loss values" in "".join(page.text)


def test_without_the_new_measures_the_headline_is_style_gaps_then_perplexity_and_style_distance(tmp_path):
    result = _result(tmp_path)
    assert list(result["headline"]) == ["furthest style features", "perplexity", "style distance"]
    lines = evaluate.headline_lines(result)
    assert len(lines) == 3 and lines[0].startswith("furthest from the persona: ")
    assert not any("classified" in line for line in lines)
    # the classifier that cannot fail stays in the details, with the reason it is not a headline
    assert "never against generated text" in evaluate.PERSONA_NOTE


def test_the_headline_leads_with_following_the_conversation_and_facts(tmp_path):
    result = _result(tmp_path, following=True)
    assert list(result["headline"]) == ["next-reply ranking", "context identification", "fooled rate at equal error",
                                        "facts recalled", "furthest style features", "perplexity", "style distance"]
    assert result["headline"]["next-reply ranking"] == {"tuned": 0.3, "base": 0.125, "n": 40, "chance": 0.1}
    lines = evaluate.headline_lines(result)
    assert "R@1, chance 10%): tuned 30% vs base 12% over 40" in lines[0]
    assert "real 50%, tuned 20% (40% of the real rate), base 10%" in lines[1]
    assert "tuned 18% vs base 4%" in lines[2]
    assert "(2 questions, any of 4 replies): tuned 50% vs base 0% (greedy reply alone: 0% vs 0%); the base with " \
           "no memories recalled: 25%" in lines[3]
    assert lines[4].count(" vs persona ") == 3
    assert lines[5].startswith("perplexity") and lines[6].startswith("style distance")


def test_the_mechanics_check_fails_on_each_margin_it_holds(tmp_path):
    result = _result(tmp_path, following=True)
    headline = result["headline"]
    headline["next-reply ranking"].update(tuned=0.5, base=0.6)
    headline["facts recalled"].update(tuned=0.6, base=0.4)
    headline["style distance"] = {"tuned": 0.3, "base": 0.35}
    assert evaluate.mechanics_ok(result) == []  # R@1 above its floor counts even when the base ranks as well
    for key, change in (("perplexity", {"tuned": 40.0, "base": 48.1}), ("style distance", {"tuned": 0.4}),
                        ("next-reply ranking", {"tuned": 0.2}), ("facts recalled", {"tuned": 0.3}),
                        ("facts recalled", {"tuned": 0.6, "base": 0.7})):
        broken = {k: dict(v) if isinstance(v, dict) else v for k, v in headline.items()}
        broken[key].update(change)
        assert len(evaluate.mechanics_ok(result | {"headline": broken})) == 1, (key, change)


def test_the_report_leads_with_the_verdict_then_one_plain_sentence_per_measure_and_lists_the_facts(tmp_path):
    page = _parse(report.write_report(tmp_path, _result(tmp_path, following=True)))
    text = "".join(page.text)
    assert page.sections == list(report.SECTIONS)
    assert text.index("Closer to Noa than the base model") < text.index("Follows the conversation:")
    assert "the twin ranks it first 30% of the time (base model 12%, a blind guess 10%), over 40 held-out" in text
    assert "a twin reply points back to its own conversation among 10 in 20% of cases; Noa's real replies do in 50%" \
        in text
    assert "is still wrong 18% of the time (base model 4%; 50% would mean it cannot tell them apart at all)" in text
    assert "asked 2 questions about things Noa wrote, the twin gets 50% right in at least one of 4 tries (base " \
           "model 0% with the same recalled memories, 25% with none)" in text
    assert "the base with none recalled: 25%" in text
    assert "perplexity on Noa's held-out replies 12.5 vs 48.1 for the base model" in text
    assert "real next reply ranked first of 10" in text and "fooled at equal error" in text  # the numbers table
    assert "what's your cat called again?" in text and "פלורנטין" in text and "Tuned 50%" in text


def _verdict(result: dict, run_dir=None) -> str:
    """The verdict paragraph's text, with the run.json of `run_dir` (if any) for the commands it suggests."""
    collector = _Collector()
    collector.feed(report.verdict(result, report.training_info(run_dir) if run_dir else None))
    (verdict,) = collector.verdicts
    return verdict


@pytest.mark.parametrize("base", [BASE, NEAR_BASE], ids=["far base", "near base"])
def test_the_verdict_counts_the_style_features_where_the_twin_is_closer_than_the_base(tmp_path, base):
    tuned, base_distance = metrics.style_distances(TUNED, REAL), metrics.style_distances(base, REAL)
    closer = sum(tuned[f] < base_distance[f] for f in metrics.FEATURES)  # a tie is not closer
    verdict = _verdict(_result(tmp_path, base=base))
    assert verdict.startswith(f"Closer to Noa than the base model on {closer} of {len(metrics.FEATURES)} style "
                              "features. Furthest: ")
    first, second = metrics.style_gaps(REAL, TUNED)[:2]  # the two furthest, the twin's value first
    fmt = {name: spec[2] for name, spec in metrics.GAP_MEASURES.items()}
    assert (f"Furthest: {first['measure']} {fmt[first['measure']](first['generated'])} vs "
            f"{fmt[first['measure']](first['persona'])}, {second['measure']} ") in verdict
    assert " (the twin vs Noa). Try: " in verdict


def _leaked(result):
    result["canaries"]["leaked"] = [SECRETS[0]]


def _learned_little(result):
    result["headline"]["perplexity"]["tuned"] = 40.0  # not below half the base's 48.1


def _facts_missed(result):
    result["headline"]["facts recalled"]["tuned"] = 0.2


def _repeats_most(result):
    gaps = result["style gaps"]["tuned"]
    gaps.sort(key=lambda g: g["measure"] != "replies repeating a 3-word run")


@pytest.mark.parametrize("weakness, advice", [
    (_leaked, "rebuild the dataset without --no-privacy and train again"),
    (_learned_little, "train longer (talkalike train /data/noa-ds --epochs 2) or add more chats: it learned from 100 "
                      "of Noa's turns"),
    (_facts_missed, "let it recall more of Noa's past exchanges: talkalike chat noa-run --memories 6"),
    (_repeats_most, "talkalike tune-generation noa-run: sampling settings change replies repeating a 3-word run"),
], ids=["secret leaked", "learned little", "facts missed", "repeats itself"])
def test_try_names_the_next_step_for_what_is_weakest(tmp_path, weakness, advice):
    (tmp_path / "run.json").write_text(json.dumps({"dataset": "/data/noa-ds", "config": {"epochs": 1.0}}))
    result = _result(tmp_path, following=True)
    # nothing weak: the next step is the blind test with friends
    assert _verdict(result, tmp_path).endswith("Try: ask friends to tell Noa from the twin: talkalike serve noa-run, "
                                               "then open /ab.")
    weakness(result)
    verdict = _verdict(result, tmp_path)
    assert advice in verdict and "/ab" not in verdict


def test_the_bubble_separator_never_shows_and_every_bubble_picks_its_direction(tmp_path):
    path = report.write_report(tmp_path, _result(tmp_path, following=True))
    html = path.read_text(encoding="utf-8")
    assert BUBBLE_MARK not in html and "|msg|" not in html
    page = _parse(path)
    assert page.bubbles and all(b.get("dir") == "auto" for b in page.bubbles)
    text = "".join(page.text)
    # the training reply holding a secret, the sample history: one bubble per message, in order
    assert "😍my new number btw [PHONE_1] 📱הקורקינט מת" in text
    assert f"Noa is texting with Daniel.{MIXED}see u thereare you coming?we leave at 8" in text
    assert "bubble" not in "".join(b.get("class") for b in page.bubbles if b.get("dir") != "auto")


def test_the_canary_test_shows_one_row_per_context_not_one_per_secret(tmp_path):
    page = _parse(report.write_report(tmp_path, _result(tmp_path)))
    canary_tables = [rows for section, rows, _ in page.tables if section == "memorisation"][1:]  # after copy rates
    assert canary_tables == [1 + len(CANARY_CONTEXTS)]  # the header and one row per context, not 6 rows
    text = "".join(page.text)
    assert f"with each of the {len(CANARY_CONTEXTS)} contexts where a secret was written in training" in text
    assert text.count(", ".join(SECRETS)) == len(CANARY_CONTEXTS)  # each row names every secret it checked
    assert "(empty message)" in text  # a context whose last message was empty says so instead of an empty cell


def test_shares_are_written_as_percentages(tmp_path):
    assert (report.percent(0.287), report.percent(0.004), report.percent(0), report.percent(1)) == \
        ("29%", "0.4%", "0%", "100%")
    page = _parse(report.write_report(tmp_path, _result(tmp_path, following=True)))
    cells = page.text
    # persona classification 0.75, copy rate 0, fooled 0.18 and the summary's shares are percentages, not decimals
    assert "75%" in cells and "0.750" not in cells and "18%" in cells and "0.180" not in cells
    shares = metrics.summary(REAL)
    assert f"{shares['laughter share']:.0%}" in cells and f"{shares['laughter share']:.3f}" not in cells


def test_the_page_fits_a_phone_wide_tables_scroll_in_their_own_box(tmp_path):
    page = _parse(report.write_report(tmp_path, _result(tmp_path, following=True)))
    viewport = [m for m in page.metas if m.get("name") == "viewport"]
    assert viewport and "width=device-width" in viewport[0]["content"]
    assert page.tables and all(in_scroll_box for _, _, in_scroll_box in page.tables)
    assert ".scroll { overflow-x: auto;" in report.CSS


def test_the_loss_curves_have_axis_titles_and_a_legend_of_training_and_held_out_loss(tmp_path, monkeypatch):
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "epoch": s / 10, "loss": 3 - s / 10}) + "\n" for s in range(1, 11))
        + json.dumps({"step": 10, "epoch": 1.0, "eval_loss": 2.4}) + "\n"
        + json.dumps({"step": 10, "epoch": 1.0, "train_loss": 2.5}) + "\n")
    figures = []

    def keep_labels(fig):
        ax = fig.axes[0]
        figures.append((ax.get_xlabel(), ax.get_ylabel(), [t.get_text() for t in ax.get_legend().get_texts()]))
        return '<img alt="" src="data:image/png;base64,">'

    monkeypatch.setattr(report, "_png", keep_labels)
    text = "".join(_parse(report.write_report(tmp_path, _result(tmp_path))).text)
    xlabel, ylabel, legend = figures[0]  # the training section comes first after the headline
    assert "step" in xlabel and "loss" in ylabel and "per token" in ylabel
    assert legend == ["training loss (per logged step)", "held-out loss (eval set)"]  # the run's mean train_loss left out
    assert "10 steps (1 epoch); last training loss 2.00, held-out loss 2.40" in text


@pytest.mark.parametrize("preference, said", [
    ({"pairs": 921, "steps": 55, "held-out pairs": 200, "real reply preferred (held out)": {"before": 0.71,
                                                                                          "after": 0.82}},
     "Then preference tuning: 921 pairs of the real reply against one from another conversation, 55 steps; on 200 "
     "held-out pairs the real reply is now the likelier one 82% of the time, against 71% before."),
    ({"pairs": 0, "skipped": "no preference tuning: 40 pairs, fewer than the 300 it needs"},
     "Preference tuning: skipped (no preference tuning: 40 pairs, fewer than the 300 it needs)."),
    (None, None),
])
def test_the_training_section_says_what_preference_tuning_did(tmp_path, monkeypatch, preference, said):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "epoch": 1.0, "loss": 2.0}) + "\n")
    (tmp_path / "run.json").write_text(json.dumps({"name": "noa", "preference": preference}))
    monkeypatch.setattr(report, "_png", lambda fig: "")
    text = " ".join(" ".join(_parse(report.write_report(tmp_path, _result(tmp_path))).text).split())
    if said is None:
        assert "reference tuning" not in text
    else:
        assert said in text


# --- in a real browser, at a phone's width ------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
# Where the letters at the given indices of a bubble's text are drawn (x of their left edges).
LETTER_X = """(el, indices) => {
  const range = document.createRange();
  return indices.map((k) => {
    range.setStart(el.firstChild, k); range.setEnd(el.firstChild, k + 1); return range.getBoundingClientRect().left;
  });
}"""


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).is_file(), "Debian's chromium is missing: run scripts/setup.sh (apt-get install chromium)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


def test_on_a_phone_the_page_does_not_scroll_sideways_and_mixed_hebrew_bubbles_read_right(browser, tmp_path):
    path = report.write_report(tmp_path, _result(tmp_path, following=True))
    page = browser.new_page(viewport={"width": 390, "height": 844})
    page.goto(path.as_uri())
    widths = page.evaluate("() => [document.documentElement.scrollWidth, document.body.scrollWidth, innerWidth]")
    assert widths[0] <= widths[2] and widths[1] <= widths[2], widths
    # the samples table is wider than a phone: it scrolls inside its own box instead of widening the page
    assert page.evaluate("() => [...document.querySelectorAll('.scroll')].some(b => b.scrollWidth > b.clientWidth)")

    hebrew = page.locator(".bubble", has_text="חחח יאללה").first
    assert hebrew.evaluate("el => getComputedStyle(el).direction") == "rtl"
    first, last = hebrew.evaluate(LETTER_X, [0, len("חחח יאללה") - 1])
    assert first > last  # right to left: the first letter is drawn rightmost
    mixed = page.locator("#samples .bubble", has_text=MIXED).first
    english = page.locator("#samples .bubble", has_text="see u there").first
    assert mixed.evaluate("el => getComputedStyle(el).direction") == "rtl"
    assert english.evaluate("el => getComputedStyle(el).direction") == "ltr"
    hebrew_word, english_word = mixed.evaluate(LETTER_X, [0, MIXED.index("sunset")])
    assert hebrew_word > english_word  # the Hebrew opening sits to the right of the English after it
    assert mixed.bounding_box()["y"] < english.bounding_box()["y"]  # the messages stay in the order they were sent
    # unicode-bidi: plaintext gives each line of a bubble its own direction: the Hebrew second line of this
    # English-first bubble reads right to left, its trailing "ok" drawn left of the Hebrew before it
    lines = page.locator("#samples .bubble", has_text="on my way").first
    hebrew_start, ok = lines.evaluate(LETTER_X, [LINES.index("א"), LINES.index("ok")])
    assert hebrew_start > ok
