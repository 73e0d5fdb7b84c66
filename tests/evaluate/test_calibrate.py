"""The habit calibration after training: the twin's emoji and laugh rates on its own training turns, set against the
persona's, become scales in generation.json that the sampler reads (with a fake twin; the sampler's side is in
tests/decode/test_language.py)."""

import json
import math

import pytest

from talkalike.decode.config import GenerationConfig, load_generation_config, save_generation_config
from talkalike.errors import TalkalikeError
from talkalike.evaluate.calibrate import MAX_SCALE, RECORD, calibrate_run, correction, new_scales
from talkalike.files import write_jsonl
from talkalike.memory import RECALL_LIMIT


def test_the_correction_brings_a_twin_that_sends_too_few_or_too_many_to_the_persona_s_rate():
    for twin, persona in ((0.30, 0.385), (0.21, 0.16), (0.05, 0.25)):
        c = correction(twin, persona, 2000, 2000)
        assert (c > 1) == (persona > twin)
        smoothed = (twin * 2000 + 0.5) / 2001
        assert 1 - (1 - smoothed) ** c == pytest.approx(persona, abs=1e-9)  # per-token mass times c -> the rate


def test_a_gap_within_two_standard_errors_of_the_two_shares_changes_nothing():
    assert correction(0.30, 0.33, 300, 1000) == 1.0  # two standard errors: 6.1 points here
    assert correction(0.30, 0.33, 5000, 5000) > 1.0  # and 1.9 points here
    assert correction(0.057, 0.034, 246, 790) == 1.0  # Lucía's emoji: 14 of the twin's messages, 27 of hers
    assert correction(0.301, 0.409, 342, 2415) > 1.0  # Noa's: 103 of the twin's messages, 988 of hers


def test_a_habit_the_persona_never_has_is_damped_to_the_bound_and_scales_compose():
    generated = [["haha ok", "lol"], ["sure"]] * 50  # laughs in 2 of 3 messages
    persona = [["ok"], ["sure thing ❤️"]] * 50  # never laughs, emoji in half
    found = new_scales(generated, persona, {"emoji": 1.0, "laughter": 1.0})
    assert found["laughter"]["scale"] == pytest.approx(1 / MAX_SCALE)
    assert found["emoji"]["twin"] == 0 and found["emoji"]["scale"] == MAX_SCALE
    again = new_scales([["ok 🙈"], ["sure"]] * 60, [["ok 🙈"], ["sure 🙈"], ["no"]] * 40, {"emoji": 2.0, "laughter": 1.0})
    assert again["emoji"]["scale before"] == 2.0 and 2.0 < again["emoji"]["scale"] <= MAX_SCALE
    assert again["laughter"]["scale"] == 1.0  # neither laughs: within noise


def _run(home, rows):
    dataset = home / "datasets" / "noa"
    dataset.mkdir(parents=True)
    write_jsonl(dataset / "train.jsonl", rows)
    run = home / "runs" / "noa"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"base": {"id": "tiny"}, "layout": "chat", "dataset": str(dataset)}))
    return run


def test_calibration_writes_the_scales_that_chat_reads_keeps_what_tuning_saved_and_marks_each_turn_s_row(home):
    rows = [{"messages": [{"role": "user", "content": f"what's up {i}?"},
                          {"role": "assistant", "content": "nothing much 🙈" if i % 2 else "chilling"}],
             "start": f"2025-01-{i + 1:02d}T10:00:00", "id": f"row-{i}"} for i in range(20)]
    run = _run(home, rows)
    save_generation_config(run, GenerationConfig(temperature=0.7), extra={"tuning": {"score": 0.2}})
    seen = []

    def twin(histories, config):  # never sends an emoji, laughs in every reply
        seen.append((histories, config))
        return [["haha nothing"] for _ in histories]

    record = calibrate_run(run, home, turns=12, generate=twin)
    histories, config = seen[0]
    assert len(histories) == record["training turns"] == 12
    assert config.temperature == 0.7 and config.max_new_tokens == 48  # the run's settings, eval's reply length
    for history in histories:
        number = int(history[-1]["content"].split()[-1].rstrip("?"))
        assert history[-1][RECALL_LIMIT] == {"before": rows[number]["start"], "besides": f"row-{number}"}
    assert record["emoji"]["twin"] == 0 and record["emoji"]["persona"] == 0.5 and record["emoji"]["scale"] > 1
    assert record["laughter"]["scale"] == pytest.approx(1 / MAX_SCALE)
    loaded = load_generation_config(run)
    assert (loaded.emoji_scale, loaded.laughter_scale) == (record["emoji"]["scale"], record["laughter"]["scale"])
    saved = json.loads((run / "generation.json").read_text())
    assert loaded.temperature == 0.7 and saved["tuning"] == {"score": 0.2} and saved[RECORD] == record
    calibrate_run(run, home, turns=12, generate=twin)  # again: from the scales it wrote, within the bounds
    assert math.isclose(load_generation_config(run).laughter_scale, 1 / MAX_SCALE)


def test_a_run_that_does_not_keep_habits_is_not_calibrated(home):
    run = _run(home, [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}])
    save_generation_config(run, GenerationConfig(keep_habits=False))
    assert calibrate_run(run, home, generate=lambda h, c: pytest.fail("no twin is needed")) is None


@pytest.mark.parametrize("value", [0, -1.5, "2", None])
def test_a_scale_in_generation_json_that_is_not_above_zero_is_one_error_line(home, value):
    run = home / "runs" / "noa"
    run.mkdir(parents=True)
    (run / "generation.json").write_text(json.dumps({"emoji_scale": value}))
    with pytest.raises(TalkalikeError, match="emoji_scale must be a number above 0"):
        load_generation_config(run)
