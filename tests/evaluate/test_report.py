"""report.html renders every section, self-contained (inline PNGs only), right-to-left aware."""

import json
from html.parser import HTMLParser

from talkalike.evaluate import abtest, metrics, report

REAL = [["haha ok", "see u 😂"], ["חחח יאללה"], ["lol no way"], ["sure", "8?"]]
TUNED = [["haha sure"], ["יאללה 😂"], ["lol ok"], ["ok", "where?"]]
BASE = [["Hello, I am fine, thank you."], ["What do you mean by that?"], ["I do not know."], ["Sure."]]


def _result(run_dir) -> dict:
    texts = {name: ["\n".join(r) for r in replies] for name, replies in (("real", REAL), ("tuned", TUNED), ("base", BASE))}
    index = metrics.CopyIndex(["we should totally go to the beach on saturday morning with pita"])
    return {
        "run": "noa",
        "base": {"id": "gemma-3-270m"},
        "held-out turns": 4,
        "perplexity": {"tuned": {"perplexity": 12.5, "nll per token": 2.53, "tokens": 40},
                       "base": {"perplexity": 48.1, "nll per token": 3.87, "tokens": 40}},
        "style": metrics.style_report({"real": REAL, "tuned": TUNED, "base": BASE}),
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
        "headline": {"perplexity": {"tuned": 12.5, "base": 48.1}, "style distance": {"tuned": 0.2, "base": 0.6},
                     "classified as persona": {"tuned": 0.75, "base": 0.25, "real": 0.9}},
        "ab": abtest.results(run_dir),
    }


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
