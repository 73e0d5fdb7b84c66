"""report.html renders every section, self-contained (inline PNGs only), right-to-left aware."""

import json
from html.parser import HTMLParser

from talkalike.evaluate import abtest, evaluate, metrics, report

REAL = [["haha ok", "see u 😂"], ["חחח יאללה"], ["lol no way"], ["sure", "8?"]]
TUNED = [["haha sure"], ["יאללה 😂"], ["lol ok"], ["ok", "where?"]]
BASE = [["Hello, I am fine, thank you."], ["What do you mean by that?"], ["I do not know."], ["Sure."]]


def _result(run_dir, following: bool = False) -> dict:
    """An eval.json by hand; with `following`, also the conversation-following measures and the facts probe."""
    texts = {name: ["\n".join(r) for r in replies] for name, replies in (("real", REAL), ("tuned", TUNED), ("base", BASE))}
    index = metrics.CopyIndex(["we should totally go to the beach on saturday morning with pita"])
    result = {
        "run": "noa",
        "base": {"id": "gemma-3-270m"},
        "held-out turns": 4,
        "perplexity": {"tuned": {"perplexity": 12.5, "nll per token": 2.53, "tokens": 40},
                       "base": {"perplexity": 48.1, "nll per token": 3.87, "tokens": 40}},
        "style": metrics.style_report({"real": REAL, "tuned": TUNED, "base": BASE}),
        "style gaps": {"tuned": metrics.style_gaps(REAL, TUNED), "base": metrics.style_gaps(REAL, BASE, "base")},
        "persona classification": {"rate": {"real": 0.9, "tuned": 0.75, "base": 0.25, "other speakers (held out)": 0.1},
                                   "trained on": {"persona turns": 100, "other turns": 90}},
        "real vs generated auc": {"tuned": 0.62, "base": 0.97},
        "memorisation": {name: {"copy rate": index.copy_rate(t), "copies": 0} for name, t in texts.items()},
        "canaries": {"pseudonymised": True, "secrets": ["050-234-5678"], "leaked": [],
                     "results": [{"secret": "050-234-5678", "planted as": "placeholder", "training reply": "my new number btw [PHONE_1] 📱",
                                  "context": "what is your number?", "leaked": False, "leaks": 0, "tries": 4,
                                  "outputs": ["its [PHONE_1]", "haha"]}]},
        "samples": [{"context": [{"role": "user", "content": "are you coming?"}], "real": r, "tuned": t, "base": b}
                    for r, t, b in zip(REAL, TUNED, BASE, strict=True)],
        "ab": abtest.results(run_dir),
    }
    if following:
        result["next-reply ranking"] = {m: {"r@1": r, "n": 40, "chance": 0.1, "interval": [r - 0.1, r + 0.1]}
                                        for m, r in (("tuned", 0.3), ("base", 0.125))}
        result["context identification"] = {m: {"rate": r, "n": 40, "chance": 0.1} for m, r in
                                            (("tuned", 0.2), ("base", 0.1), ("real", 0.5))}
        result["context identification"].update({"tuned share of real": 0.4, "base share of real": 0.2})
        result["fooled rate at equal error"] = {"tuned": 0.18, "base": 0.04}
        result["facts"] = {"file": "/x/noa.facts.jsonl", **{m: _probe(m) for m in ("tuned", "base")}}
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

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs.get("id"))
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        for key in ("src", "href"):
            if key in attrs and tag != "img":
                self.links.append(attrs[key])
        if attrs.get("dir") == "auto":
            self.auto_dir.append(tag)

    def handle_data(self, data):
        self.text.append(data)


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
    assert "(2 questions, any of 4 replies): tuned 50% vs base 0% (greedy reply alone: 0% vs 0%)" in lines[3]
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


def test_the_report_leads_with_the_headline_lines_and_lists_the_facts(tmp_path):
    page = _parse(report.write_report(tmp_path, _result(tmp_path, following=True)))
    text = "".join(page.text)
    assert page.sections == list(report.SECTIONS)
    assert "real next reply ranked first of 10" in text and "furthest from the persona" in text
    assert "what's your cat called again?" in text and "פלורנטין" in text and "Tuned 50%" in text
    assert "fooled at equal error" in text
