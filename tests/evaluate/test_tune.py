"""tune-generation with a fake generator: the setting that reproduces the persona is found, saved and printed."""

import json
from pathlib import Path

import pytest

from talkalike.cli import main

PERSONA = ["haha ok 😂", "yalla see u at 8", "lol no way\n<|msg|>\nseriously?? 🙈", "sure sure", "omg yes 🏃‍♀️",
           "nahh im tired", "hahaha pita again 😂", "ok ok coming"]
OTHERS = ["Good evening, are you joining us for dinner tomorrow?", "Could you send me the document, please?",
          "I will arrive at the station at eight o'clock.", "Did you finish the report for Monday?",
          "Thank you for your help yesterday.", "Please remember to bring the keys.",
          "The meeting has been moved to Thursday afternoon.", "Would you like to come to the concert?"]
BEST = (0.8, 1.1, 0.9)  # the only setting whose fake replies are the persona's real ones


def rows(persona: list[str], others: list[str]) -> list[dict]:
    return [{"messages": [{"role": "user", "content": o}, {"role": "assistant", "content": p}]}
            for o, p in zip(others, persona, strict=True)]


@pytest.fixture
def run_dir(home: Path) -> Path:
    dataset = home / "ds"
    dataset.mkdir()
    with open(dataset / "train.jsonl", "w", encoding="utf-8") as f:
        for row in rows(PERSONA, OTHERS) * 3:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    run = home / "runs" / "dana"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"base": {"id": "tiny"}, "layout": "chat",
                                              "dataset": str(dataset)}))
    # Held-out: the same persona answering the same kind of messages, reversed so pairs differ from training.
    with open(run / "eval.jsonl", "w", encoding="utf-8") as f:
        for row in rows(PERSONA[::-1], OTHERS):
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return run


def fake_generator(calls: list):
    """Real persona replies under BEST; formal, unlike the persona, under every other setting."""
    real = dict(zip(OTHERS, PERSONA[::-1], strict=True))

    def generate(histories, config):
        calls.append(config)
        key = (config.temperature, config.repetition_penalty, config.top_p)
        if key == BEST:
            return [real[h[-1]["content"]].split("\n<|msg|>\n") for h in histories]
        return [["Certainly. I shall consider your message carefully and reply in due course."] for _ in histories]

    return generate


def test_the_setting_known_to_match_the_persona_is_saved_and_read_back(home, run_dir, monkeypatch, capsys):
    import talkalike.evaluate.tune as tune
    from talkalike.decode.config import load_generation_config

    calls = []
    monkeypatch.setattr(tune, "twin_generator", lambda run, home, batch: fake_generator(calls))
    assert main(["--home", str(home), "tune-generation", "dana", "--limit", "8"]) == 0
    config = load_generation_config(run_dir)
    assert (config.temperature, config.repetition_penalty, config.top_p) == BEST
    # The tuning caps and seed are for the scan only; the saved defaults keep the run's reply length.
    assert config.max_new_tokens == 200 and config.seed is None
    assert len(calls) == len(tune.TuneConfig().grid()) and all(c.seed == 0 for c in calls)
    saved = json.loads((run_dir / "generation.json").read_text())
    assert len(saved["tuning"]["table"]) == len(calls) and saved["tuning"]["held_out_turns"] == 8

    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["temperature", "rep_penalty", "top_p", "style_dist", "persona", "score"]
    assert out[1].startswith("*") and out[1].split()[1:4] == ["0.80", "1.100", "0.90"]
    assert len(out) == 1 + len(calls) + 1 and out[-1].startswith("best: temperature 0.8")


def test_scores_rank_the_persona_like_setting_first_with_both_metrics(home, run_dir):
    from talkalike.evaluate.tune import TuneConfig, tune

    config = TuneConfig(temperatures=(0.5, 0.8), repetition_penalties=(1.1,), top_ps=(0.9,), limit=None)
    rows, best, turns = tune(run_dir, home, config, generate=fake_generator([]))
    assert turns == len(OTHERS)
    assert (best.temperature, best.repetition_penalty, best.top_p) == BEST
    assert best.style_distance == pytest.approx(0.0)
    other = next(row for row in rows if row is not best)
    assert other.style_distance > 0.3
    assert best.persona_rate > other.persona_rate


def test_without_the_training_set_the_scan_uses_style_distance_alone(home, run_dir, capsys):
    from talkalike.evaluate.tune import TuneConfig, tune

    info = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps(info | {"dataset": str(home / "gone")}))
    config = TuneConfig(temperatures=(0.5, 0.8), repetition_penalties=(1.1,), top_ps=(0.9,))
    rows, best, _ = tune(run_dir, home, config, generate=fake_generator([]))
    assert all(row.persona_rate is None and row.score == row.style_distance for row in rows)
    assert best.temperature == 0.8
    assert "style distance only" in capsys.readouterr().err


def test_the_grid_comes_from_the_command_line(home, run_dir, monkeypatch):
    import talkalike.evaluate.tune as tune

    calls = []
    monkeypatch.setattr(tune, "twin_generator", lambda run, home, batch: fake_generator(calls))
    assert main(["--home", str(home), "tune-generation", "dana", "--temperature", "0.5", "0.8",
                 "--repetition-penalty", "1.1", "--top-p", "0.9", "--limit", "3"]) == 0
    assert sorted(c.temperature for c in calls) == [0.5, 0.8]
    saved = json.loads((run_dir / "generation.json").read_text())
    assert saved["temperature"] == 0.8 and saved["tuning"]["held_out_turns"] == 3


def test_a_run_without_held_out_conversations_is_a_one_line_error(home, run_dir, capsys):
    (run_dir / "eval.jsonl").unlink()
    assert main(["--home", str(home), "tune-generation", "dana"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("error: dana has no eval.jsonl") and "Traceback" not in err
