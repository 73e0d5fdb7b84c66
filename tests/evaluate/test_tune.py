"""tune-generation with a fake generator and judge: the setting that reproduces the persona is found, saved and
printed."""

import json
from pathlib import Path

import pytest

from talkalike.cli import main
from talkalike.files import write_jsonl

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
    run = home / "runs" / "dana"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"base": {"id": "tiny"}, "layout": "chat"}))
    write_jsonl(run / "eval.jsonl", rows(PERSONA[::-1], OTHERS))  # held out: the persona answering such messages
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


def fake_judge(pairs):
    """Knows which reply answers which message: 1 for the real pair, 0 otherwise."""
    real = dict(zip(OTHERS, PERSONA[::-1], strict=True))
    return [float("\n<|msg|>\n".join(reply) == real[context[-1]["content"]]) for context, reply in pairs]


def test_the_setting_known_to_match_the_persona_is_saved_and_read_back(home, run_dir, monkeypatch, capsys):
    import talkalike.evaluate.tune as tune
    from talkalike.decode.config import load_generation_config

    calls = []
    monkeypatch.setattr(tune, "twin_tools", lambda run, home, batch: (fake_generator(calls), fake_judge))
    assert main(["--home", str(home), "tune-generation", "dana", "--limit", "8"]) == 0
    config = load_generation_config(run_dir)
    assert (config.temperature, config.repetition_penalty, config.top_p) == BEST
    # The tuning caps and seed are for the scan only; the saved defaults keep the run's reply length.
    assert config.max_new_tokens == 200 and config.seed is None
    switches = sum(len(values) - 1 for _, values in tune.CHARACTER_SWITCHES)
    assert len(calls) == len(tune.TuneConfig().grid()) + switches and all(c.seed == 0 for c in calls)
    assert config.own_words is False and config.own_emoji is True  # no switch scored better: the defaults stay
    saved = json.loads((run_dir / "generation.json").read_text())
    assert len(saved["tuning"]["table"]) == len(calls) and saved["tuning"]["held_out_turns"] == 8

    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["temperature", "rep_penalty", "top_p", "style_dist", "style_gap", "separable",
                              "off_context", "score", "changes"]
    assert out[1].startswith("*") and out[1].split()[1:4] == ["0.80", "1.100", "0.90"] and out[1].endswith(" -")
    assert len(out) == 1 + len(calls) + 1 and out[-1].startswith("best: temperature 0.8")


def test_every_measure_ranks_the_persona_like_setting_first(home, run_dir):
    from talkalike.evaluate.tune import TuneConfig, tune

    config = TuneConfig(temperatures=(0.5, 0.8), repetition_penalties=(1.1,), top_ps=(0.9,), limit=None,
                        characters=False)
    rows, best, turns = tune(run_dir, home, config, generate=fake_generator([]), judge=fake_judge)
    assert turns == len(OTHERS)
    assert (best.temperature, best.repetition_penalty, best.top_p) == BEST
    assert best.style_distance == pytest.approx(0.0) and best.style_gap == pytest.approx(0.0)
    assert best.off_context == pytest.approx(0.0)
    other = next(row for row in rows if row is not best)
    assert other.style_distance > 0.3 and other.style_gap > 0.3 and other.separability > 0.5
    # the same formal reply to every message: its own context wins only by the judge's tie share, 1 in 10
    assert other.off_context == pytest.approx(1 - 1 / len(OTHERS))


def test_a_setting_whose_replies_ignore_the_message_loses_to_one_that_answers_it(home, run_dir):
    """Same style, one answering each message and one answering another: only the off-context part tells them apart."""
    from talkalike.evaluate.tune import TuneConfig, tune

    real = dict(zip(OTHERS, PERSONA[::-1], strict=True))

    def shuffled(histories, config):  # the persona's own replies, each sent to the next message
        replies = [real[h[-1]["content"]].split("\n<|msg|>\n") for h in histories]
        return replies if config.temperature == 0.8 else replies[1:] + replies[:1]

    config = TuneConfig(temperatures=(0.5, 0.8), repetition_penalties=(1.1,), top_ps=(0.9,), limit=None,
                        characters=False)
    rows, best, _ = tune(run_dir, home, config, generate=shuffled, judge=fake_judge)
    assert best.temperature == 0.8
    assert rows[0].style_distance == pytest.approx(best.style_distance) and rows[0].off_context == 1.0


def test_the_grid_comes_from_the_command_line(home, run_dir, monkeypatch):
    import talkalike.evaluate.tune as tune

    calls = []
    monkeypatch.setattr(tune, "twin_tools", lambda run, home, batch: (fake_generator(calls), fake_judge))
    assert main(["--home", str(home), "tune-generation", "dana", "--temperature", "0.5", "0.8",
                 "--repetition-penalty", "1.1", "--top-p", "0.9", "--limit", "3", "--sampling-only"]) == 0
    assert sorted(c.temperature for c in calls) == [0.5, 0.8]
    saved = json.loads((run_dir / "generation.json").read_text())
    assert saved["temperature"] == 0.8 and saved["tuning"]["held_out_turns"] == 3


def test_a_run_without_held_out_conversations_is_a_one_line_error(home, run_dir, capsys):
    (run_dir / "eval.jsonl").unlink()
    assert main(["--home", str(home), "tune-generation", "dana"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("error: dana has no eval.jsonl") and "Traceback" not in err


def test_an_in_character_switch_is_kept_only_where_it_brings_the_replies_closer(home, run_dir, monkeypatch, capsys):
    """At the best sampling setting the twin adds a formal line of the base model's text, unless held to the
    persona's own words: own_words is switched on and saved; the switches after it are tried with it on, and none of
    them, changing nothing here, is kept."""
    import talkalike.evaluate.tune as tune
    from talkalike.decode.config import load_generation_config

    calls, persona_like = [], fake_generator([])

    def generate(histories, config):
        calls.append(config)
        replies = persona_like(histories, config)
        formal = ["Certainly, I shall reply in due course."]
        return replies if config.own_words else [reply + formal for reply in replies]

    monkeypatch.setattr(tune, "twin_tools", lambda run, home, batch: (generate, fake_judge))
    assert main(["--home", str(home), "tune-generation", "dana", "--temperature", "0.5", "0.8",
                 "--repetition-penalty", "1.1", "--top-p", "0.9"]) == 0
    config = load_generation_config(run_dir)
    assert config.own_words is True
    assert (config.temperature, config.no_repeat_ngram, config.max_messages) == (0.8, 3, None)
    trials = calls[2:]
    assert [c.own_words for c in trials] == [True] * len(trials) and len(trials) == len(tune.CHARACTER_SWITCHES)
    assert [(c.own_emoji, c.keep_habits, c.steer_language, c.no_repeat_ngram, c.max_messages) for c in trials[1:]] == [
        (False, True, True, 3, None), (True, False, True, 3, None), (True, True, False, 3, None),
        (True, True, True, 0, None), (True, True, True, 3, 0)]
    saved = json.loads((run_dir / "generation.json").read_text())
    assert [row["changes"] for row in saved["tuning"]["table"][2:4]] == [{"own_words": True},
                                                                         {"own_words": True, "own_emoji": False}]
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("*") and out[1].endswith("own_words=true")
    assert out[-1].startswith("best: temperature 0.8, repetition_penalty 1.1, top_p 0.9, own_words=true")
