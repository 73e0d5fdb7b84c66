"""Preference tuning (train/preference.py): the pairs, the packed log-likelihoods, the DPO loop, the run it writes."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from talkalike.cli import main
from talkalike.memory import MEMORY_KEY, Exchange
from talkalike.train import preference
from talkalike.train.recipe import PRESETS
from tests.train.test_train import conversation, write_dataset

torch = pytest.importorskip("torch")

TOPICS = [("what's the cat called?", "pita"), ("where do you work?", "the studio"),
          ("which beach tomorrow?", "gordon beach"), ("coffee or tea?", "coffee always")]


def topic_row(i: int) -> dict:
    """A conversation whose persona reply is fixed by the question: only a model that reads the question can tell
    the real reply from another conversation's."""
    question, answer = TOPICS[i % len(TOPICS)]
    return {"messages": [{"role": "system", "content": "Noa is texting with Dan."},
                         {"role": "user", "content": question}, {"role": "assistant", "content": answer}],
            "id": f"c{i}", "start": f"2025-01-{1 + i % 28:02d}T10:00:00"}


def test_pairs_pit_a_real_reply_against_another_conversations_reply_to_the_same_history():
    rows = [conversation(i) for i in range(12)]
    pairs = preference.preference_pairs(rows, seed=3)
    answering = sum(1 for row in rows for j, m in enumerate(row["messages"]) if m["role"] == "assistant" and j > 0)
    assert len(pairs) == answering  # every persona turn that answers a message
    for pair in pairs:
        row = next(r for r in rows if r["messages"][: len(pair.history)] == pair.history
                   and r["messages"][len(pair.history)]["content"] == pair.chosen)
        assert pair.history[-1]["role"] == "user" and pair.rejected != pair.chosen
        others = [m["content"] for r in rows if r is not row for m in r["messages"] if m["role"] == "assistant"]
        assert pair.rejected in others
    assert preference.preference_pairs(rows, seed=3) == pairs  # the same seed draws the same pairs
    assert preference.preference_pairs(rows, seed=4) != pairs
    limited = preference.preference_pairs(rows, limit=5, seed=3)
    assert len(limited) == 5 and len({json.dumps(p.history) for p in limited}) == 5  # spread, not the first five


def test_pairs_carry_the_exchanges_recalled_for_their_row_and_never_the_row_itself():
    class Recall:
        def recall(self, query, k, before=None, besides=None):
            self.asked = (before, besides)
            return [Exchange("earlier question", "earlier answer", "2024-12-01T09:00:00", "old")][:k]

    rows = [topic_row(i) for i in range(6)]
    memory = Recall()
    pairs = preference.preference_pairs(rows, memory, memories=1, seed=0)
    assert len(pairs) == 6
    for pair in pairs:
        assert pair.history[0]["role"] == "system"
        assert [m["content"] for m in pair.history if m.get(MEMORY_KEY)] == ["earlier question", "earlier answer"]
        assert pair.history[-1]["content"] in dict(TOPICS)
    assert memory.asked == ("2025-01-06T10:00:00", "c5")  # only earlier conversations, never the row itself


def _tiny_peft(tiny_model_dir, tmp_path, recipe):
    from talkalike.model import load_base
    from talkalike.train.trainer import apply_lora

    torch.manual_seed(0)
    return apply_lora(load_base(str(tiny_model_dir), tmp_path), recipe)


def test_packed_log_likelihoods_equal_each_sequence_scored_alone(tiny_model_dir, tiny_tokenizer, tmp_path):
    recipe = PRESETS["default"]
    model = _tiny_peft(tiny_model_dir, tmp_path, recipe).eval()
    rows = [conversation(i) for i in range(6)]
    encoded, too_long = preference.encode(preference.preference_pairs(rows, seed=1)[:3], tiny_tokenizer, "chat", 256)
    assert len(encoded) == 3 and too_long == 0
    with torch.no_grad():
        packed = preference.sequence_logps(model, encoded, [0, 1, 2], torch.device("cpu"))
        for n, pair in enumerate(encoded):
            for side, (ids, start) in enumerate(((pair.chosen, pair.chosen_start),
                                                 (pair.rejected, pair.rejected_start))):
                logits = model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
                alone = sum(float(logits[p - 1, ids[p]]) for p in range(start, len(ids)))
                assert packed[n, side].item() == pytest.approx(alone, rel=1e-4, abs=1e-4)


def test_a_too_long_pair_is_left_out_and_rows_keep_pairs_whole(tiny_tokenizer):
    rows = [conversation(i) for i in range(6)]
    pairs = preference.preference_pairs(rows, seed=1)
    encoded, too_long = preference.encode(pairs, tiny_tokenizer, "chat", 40)
    assert too_long > 0 and len(encoded) + too_long == len(pairs)
    assert all(max(len(e.chosen), len(e.rejected)) <= 40 for e in encoded)
    everything, _ = preference.encode(pairs, tiny_tokenizer, "chat", 256)
    packed = preference.pack(everything, 120)
    assert sorted(k for row in packed for k in row) == list(range(len(everything)))
    for row in packed:
        assert len(row) == 1 or sum(len(everything[k].chosen) + len(everything[k].rejected) for k in row) <= 120
    capped = preference.pack(everything, 10_000, most=3)
    assert [len(row) for row in capped] == [3] * (len(everything) // 3) + ([len(everything) % 3] if len(everything) % 3 else [])


def test_dpo_teaches_the_twin_to_prefer_the_reply_that_answers_the_question(tiny_model_dir, tiny_tokenizer, tmp_path):
    recipe = replace(PRESETS["default"], bf16=False, max_length=128, preference_lr=3e-3, preference_batch=4,
                     preference_beta=0.5)
    model = _tiny_peft(tiny_model_dir, tmp_path, recipe)
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    train_pairs = preference.preference_pairs([topic_row(i) for i in range(48)], seed=0) * 3
    held_out = preference.preference_pairs([topic_row(100 + i) for i in range(16)], seed=1)
    logged = []
    report = preference.tune(model, tiny_tokenizer, "chat", train_pairs, held_out, recipe, on_log=logged.append,
                             progress=False)
    assert report["pairs"] == 144 and report["steps"] == len(logged) >= 30
    assert report["first loss"] == pytest.approx(0.6931, abs=1e-3)  # the policy starts as its reference
    assert report["last loss"] < 0.3 and report["last reward accuracy"] > 0.9
    held = report["real reply preferred (held out)"]
    assert report["reward accuracy (held out)"] >= 0.9, report  # new conversations on the same questions
    assert held["after"] > held["before"], report
    after = dict(model.named_parameters())
    assert any(not torch.equal(after[n], p) for n, p in lora_before.items())
    assert all(torch.equal(after[n], p) for n, p in base_before.items())  # only the adapter trains
    assert {"preference_step", "preference_loss", "reward_accuracy"} <= logged[0].keys()


def train_with_pairs(tiny_model_dir, tmp_path, capsys, pairs: int = 6) -> tuple[str, dict, Path]:
    """`talkalike train --preference-pairs N` on the test dataset: (stderr, run.json, home)."""
    dataset = write_dataset(tmp_path / "ds")
    home = tmp_path / "home"
    code = main(["--home", str(home), "train", "--force", str(dataset), "--base", str(tiny_model_dir), "--name", "noa",
                 "--epochs", "1", "--preference-pairs", str(pairs)])
    err = capsys.readouterr().err
    assert code == 0, err
    return err, json.loads((home / "runs" / "noa" / "run.json").read_text()), home


def test_train_with_preference_pairs_records_the_stage_in_the_run(tiny_model_dir, tmp_path, capsys):
    err, info, home = train_with_pairs(tiny_model_dir, tmp_path, capsys)
    assert "preference tuning: 6 pairs" in err and "held-out real reply preferred" in err
    assert info["config"]["preference_pairs"] == 6
    assert info["preference"]["pairs"] == 6 and info["preference"]["held-out pairs"] > 0
    records = [json.loads(line) for line in (home / "runs" / "noa" / "metrics.jsonl").read_text().splitlines()]
    assert sum("preference_loss" in r for r in records) == info["preference"]["steps"] >= 1


def test_the_default_recipe_tunes_preferences_on_a_gpu_and_a_cpu_only_when_asked():
    from talkalike.train.recipe import resolve_recipe

    gpu, _ = resolve_recipe("default", cuda=True)
    assert gpu.preference_pairs > 0 and gpu.preference_nll > 0
    cpu, notes = resolve_recipe("default", cuda=False)
    assert cpu.preference_pairs == 0 and any("no preference tuning" in note for note in notes)
    asked, notes = resolve_recipe("default", cuda=False, preference_pairs=50)
    assert asked.preference_pairs == 50 and not any("preference" in note for note in notes)
    original, _ = resolve_recipe("original", cuda=True)
    assert original.preference_pairs == 0  # the original recipe stays the original's


def test_the_real_replys_own_loss_keeps_its_likelihood_up_while_dpo_ranks_it_first(tiny_model_dir, tiny_tokenizer,
                                                                                  tmp_path):
    """DPO alone may lift the real reply over the other by pushing both down; with preference_nll the real reply's
    likelihood rises too."""
    results = {}
    train_pairs = preference.preference_pairs([topic_row(i) for i in range(32)], seed=0) * 2
    for nll in (0.0, 1.0):
        recipe = replace(PRESETS["default"], bf16=False, max_length=128, preference_lr=3e-3, preference_batch=4,
                         preference_beta=0.5, preference_nll=nll)
        model = _tiny_peft(tiny_model_dir, tmp_path, recipe)
        encoded, _ = preference.encode(train_pairs, tiny_tokenizer, "chat", 128)
        rows = preference.pack(encoded, 256)
        before = preference._all_logps(model.eval(), encoded, rows, torch.device("cpu"), _no_autocast)
        report = preference.tune(model, tiny_tokenizer, "chat", train_pairs, [], recipe, progress=False)
        after = preference._all_logps(model.eval(), encoded, rows, torch.device("cpu"), _no_autocast)
        assert report["nll weight"] == nll and report["last reward accuracy"] > 0.9
        results[nll] = float((after[:, 0] - before[:, 0]).mean())
    assert results[1.0] > 0 and results[1.0] > results[0.0], results


def _no_autocast():
    import contextlib

    return contextlib.nullcontext()


@pytest.fixture
def two_processes(monkeypatch):
    """Training as under `accelerate launch` with two processes (the count is all the check reads)."""
    from accelerate import Accelerator

    monkeypatch.setattr(Accelerator, "num_processes", property(lambda self: 2))


def test_several_processes_refuse_an_asked_for_preference_stage_before_any_step(tiny_model_dir, tmp_path, capsys,
                                                                               two_processes):
    dataset = write_dataset(tmp_path / "ds")
    code = main(["--home", str(tmp_path / "home"), "train", "--force", str(dataset), "--base", str(tiny_model_dir),
                 "--name", "noa", "--epochs", "1", "--preference-pairs", "6"])
    err = capsys.readouterr().err
    assert code == 2 and "error: preference tuning runs in one process" in err and "Traceback" not in err
    assert not (tmp_path / "home" / "runs" / "noa").exists()


def test_several_processes_train_the_default_without_its_preference_stage_and_say_so(tiny_model_dir, tmp_path,
                                                                                    capsys, monkeypatch,
                                                                                    two_processes):
    from talkalike.train import trainer
    from talkalike.train.recipe import resolve_recipe

    def with_preferences(*args, **kwargs):  # the default as a GPU resolves it
        recipe, notes = resolve_recipe(*args, **kwargs)
        return replace(recipe, preference_pairs=6), notes

    monkeypatch.setattr(trainer, "resolve_recipe", with_preferences)
    dataset = write_dataset(tmp_path / "ds")
    run = trainer.train(dataset, tmp_path / "home", base=str(tiny_model_dir), name="noa", epochs=1.0, progress=False,
                        force=True)
    info = json.loads((run / "run.json").read_text())
    assert info["preference"] is None and info["config"]["preference_pairs"] == 0
    assert any("2 processes: no preference tuning" in note for note in info["notes"])
    assert "2 processes: no preference tuning" in capsys.readouterr().err


def test_left_to_the_preset_a_chat_with_too_few_pairs_skips_the_stage_and_says_so(tiny_model_dir, tmp_path, capsys,
                                                                                 monkeypatch):
    from talkalike.train import trainer
    from talkalike.train.recipe import resolve_recipe

    def with_preferences(*args, **kwargs):  # the default as a GPU resolves it
        recipe, notes = resolve_recipe(*args, **kwargs)
        return replace(recipe, preference_pairs=2000), notes

    monkeypatch.setattr(trainer, "resolve_recipe", with_preferences)
    dataset = write_dataset(tmp_path / "ds")  # 12 conversations: far fewer pairs than preference_min_pairs
    run = trainer.train(dataset, tmp_path / "home", base=str(tiny_model_dir), name="noa", epochs=1.0, progress=False,
                        force=True)
    info = json.loads((run / "run.json").read_text())
    assert info["preference"]["pairs"] == 0 and "fewer than the 300" in info["preference"]["skipped"]
    assert "note: no preference tuning:" in capsys.readouterr().err
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert not any("preference_loss" in r for r in records)


def test_a_share_of_the_pairs_rejects_the_base_models_own_reply_sampled_with_the_adapter_off(tiny_model_dir,
                                                                                             tiny_tokenizer, tmp_path):
    from talkalike.decode.batch import decode_many
    from talkalike.decode.config import GenerationConfig
    from talkalike.decode.twin import Twin
    from talkalike.model import load_base
    from talkalike.template import join_bubbles, render_reply

    model = _tiny_peft(tiny_model_dir, tmp_path, PRESETS["default"])
    with torch.no_grad():  # a trained adapter: with it on, the model writes otherwise
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.normal_(0, 0.5)
    model.train()
    pairs = preference.preference_pairs([topic_row(i) for i in range(12)], seed=0)
    changed, used = preference.with_base_replies(model, tiny_tokenizer, "chat", pairs, 0.5, seed=3,
                                                 max_new_tokens=12)
    picks = [int(k * len(pairs) / round(0.5 * len(pairs))) for k in range(round(0.5 * len(pairs)))]
    assert model.training  # as it was
    assert [p.history for p in changed] == [p.history for p in pairs] and [p.chosen for p in changed] == [
        p.chosen for p in pairs]
    moved = [k for k, (new, old) in enumerate(zip(changed, pairs, strict=True)) if new.rejected != old.rejected]
    assert moved == picks and used == len(picks) == 6  # half of the 12, spread over them
    # The base model alone, loaded afresh, writes exactly those replies from the pairs' own prompts; the adapter
    # would have written others.
    prompts = [render_reply(pairs[k].history, "", tiny_tokenizer, "chat") for k in picks]
    prompts = [ids[:start] for ids, start in prompts]
    config = GenerationConfig(max_new_tokens=12, seed=3, memories=0, max_messages=0, steer_language=False,
                              keep_habits=False)
    histories = [pairs[k].history for k in picks]
    base = Twin.of(load_base(str(tiny_model_dir), tmp_path).eval(), tiny_tokenizer)
    alone = [join_bubbles(m) for m in decode_many(base, histories, config, prompts=prompts)]
    assert [changed[k].rejected for k in picks] == alone
    model.eval()
    tuned = [join_bubbles(m) for m in decode_many(Twin.of(model, tiny_tokenizer, has_adapter=True), histories,
                                                  config, prompts=prompts)]
    assert tuned != alone


def test_train_records_how_many_pairs_rejected_the_base_models_reply(tiny_model_dir, tmp_path, capsys,
                                                                   monkeypatch):
    from talkalike.train.recipe import default_preset

    preset = default_preset(cuda=False)
    monkeypatch.setitem(PRESETS, preset, replace(PRESETS[preset], preference_base_share=0.5))
    err, info, _ = train_with_pairs(tiny_model_dir, tmp_path, capsys)
    based = info["preference"]["against the base model's reply"]
    assert 1 <= based <= 3 and f"({based} against the base model's reply)" in err
    assert info["config"]["preference_base_share"] == 0.5
