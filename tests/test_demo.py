"""The demo end to end: the sample chat, the embedded model trained by the default recipe (two passes over the sample),
and the evaluation it must pass."""

import json

import pytest

from talkalike.cli import main


@pytest.mark.slow
def test_the_demo_trains_a_twin_that_beats_its_base_on_perplexity_and_style(tmp_path, capsys):
    from talkalike.decode.config import GENERATION_FILE
    from talkalike.demo import RUN, SAMPLE_FACTS
    from talkalike.evaluate.calibrate import RECORD
    from talkalike.evaluate.evaluate import EVAL_FILE, MAX_PERPLEXITY_RATIO, MIN_FACTS, MIN_RANKING

    assert main(["--home", str(tmp_path), "demo"]) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "runs" / RUN / EVAL_FILE).read_text())
    headline = result["headline"]
    # The margins the demo reports against (evaluate/evaluate.py says how they were set), checked here directly.
    assert headline["perplexity"]["tuned"] <= MAX_PERPLEXITY_RATIO * headline["perplexity"]["base"]
    assert headline["style distance"]["tuned"] <= headline["style distance"]["base"]
    assert headline["next-reply ranking"]["tuned"] >= MIN_RANKING
    facts = headline["facts recalled"]
    assert facts["tuned"] >= max(MIN_FACTS, facts["base"])
    # at least twice the base model's own knowledge (nothing recalled: 0% measured) and its greedy reply's with the
    # twin's recalled memories by a margin (41-52% vs 22-26% measured over the sessions: 1.6-2.2x)
    assert facts["tuned"] >= 2 * facts["base without memory"] and facts["greedy tuned"] >= 1.25 * facts["greedy base"]
    # The issue's targets that the default recipe meets, with margins from the measured runs (BENCHMARKS.md, "The demo
    # at the new default", "Habits calibrated on the twin's own training turns"): two passes measured AUC 0.57-0.81
    # against the base's 0.91-0.94, 0-2% of replies with a repeated 3-word run (one pass: 7-15%), 2.6 messages a
    # turn, 23-26% Hebrew and, calibrated, 34% with an emoji against Noa's 2.4, 29% and 37.5%.
    auc = result["real vs generated auc"]
    assert auc["tuned"] <= auc["base"] - 0.05
    gaps = {gap["measure"]: gap for gap in result["style gaps"]["tuned"]}
    for measure in ("messages per turn", "Hebrew messages", "messages with an emoji"):
        assert abs(gaps[measure]["generated"] - gaps[measure]["persona"]) <= 0.25 * gaps[measure]["persona"], measure
    # Training ended by calibrating the habits: Noa's twin sent fewer emoji than she does (30% of its messages on
    # 128 training turns against 41% of hers: four standard errors), so their odds were scaled up.
    calibration = json.loads((tmp_path / "runs" / RUN / GENERATION_FILE).read_text())[RECORD]
    assert calibration["emoji"]["scale"] > 1 and result["generation"]["emoji_scale"] == calibration["emoji"]["scale"]
    assert gaps["replies repeating a 3-word run"]["generated"] <= 0.05
    assert "the tuned twin clears every margin" in out
    assert "furthest from the persona: " in out and "classified as the persona" not in out
    if SAMPLE_FACTS.is_file():
        assert result["facts"]["tuned"]["facts"] >= 20 and "facts from the persona's history recalled" in out
    assert f"{headline['perplexity']['tuned']:.2f}" in out  # the numbers themselves are printed
    # Pseudonymisation is on: none of the secrets planted in the sample chat came out of the tuned model.
    assert result["canaries"]["results"] and result["canaries"]["leaked"] == []
