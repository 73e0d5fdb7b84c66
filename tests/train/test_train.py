"""Training on a tiny Gemma 3 built from a config: LoRA, loss mask, packing, resume, the run folder, bad input."""

import json
from pathlib import Path

import pytest

from talkalike.cli import main
from talkalike.decode.config import GENERATION_FILE
from talkalike.evaluate.calibrate import RECORD
from talkalike.train.recipe import PRESETS, cpu_computes_bf16, resolve_recipe
from talkalike.train.trainer import RUN_FILES, _frozen_plain_head, make_trainer, render_rows, train

PERSONA_LINES = ["haha ok 😂 see you at the beach", "lol pita the cat", "ok\n<|msg|>\nsure", "חחח יאללה נתראה"]
USER_LINES = ["hey what's up?", "Hello there, how are you today?", "I think we should meet at the café on Dizengoff."]


def conversation(i: int) -> dict:
    """A short two-exchange conversation; varies with i so samples differ in length."""
    messages = []
    for turn in range(1 + i % 3):
        messages.append({"role": "user", "content": USER_LINES[(i + turn) % len(USER_LINES)]})
        messages.append({"role": "assistant", "content": PERSONA_LINES[(i + 2 * turn) % len(PERSONA_LINES)]})
    return {"messages": messages, "chat": "Maya", "start": "2025-01-01T10:00:00"}


def write_dataset(folder: Path, n_train: int = 12, n_eval: int = 3) -> Path:
    """A toy dataset, far below the minimum to learn from (dataset.MIN_CONVERSATIONS): train it with --force."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_text("".join(json.dumps(conversation(i)) + "\n" for i in range(n_train)))
    (folder / "eval.jsonl").write_text("".join(json.dumps(conversation(100 + i)) + "\n" for i in range(n_eval)))
    (folder / "dataset.json").write_text(json.dumps({"persona": "Noa", "layout": "chat"}))
    (folder / "stats.json").write_text(json.dumps({"samples": {"train": n_train, "eval": n_eval}}))
    return folder


@pytest.fixture
def dataset(tmp_path) -> Path:
    return write_dataset(tmp_path / "ds")


def tiny_trainer(tiny_model_dir, tiny_tokenizer, tmp_path, rows, **recipe_changes):
    from dataclasses import replace

    from talkalike.model import load_base

    turn_end_ids = recipe_changes.pop("turn_end_ids", None)
    recipe = replace(PRESETS["default"], max_length=256, **recipe_changes)
    records, _ = render_rows(rows, tiny_tokenizer, "chat", not recipe.persona_only_loss, recipe.max_length)
    model = load_base(str(tiny_model_dir), tmp_path)
    return make_trainer(model, tiny_tokenizer, records, [], recipe, tmp_path / "out", turn_end_ids=turn_end_ids)


def test_training_changes_the_lora_weights_and_leaves_the_base_weights_untouched(tiny_model_dir, tiny_tokenizer,
                                                                                tmp_path):
    import torch

    trainer = tiny_trainer(tiny_model_dir, tiny_tokenizer, tmp_path, [conversation(i) for i in range(8)],
                           epochs=2.0, learning_rate=1e-2, early_stopping_patience=0)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    lora = [n for n in before if "lora_" in n]
    base = [n for n in before if "lora_" not in n]
    assert lora and base
    assert all(after[n].requires_grad for n in lora) and not any(after[n].requires_grad for n in base)
    assert all(torch.equal(before[n], after[n]) for n in base)
    changed = [n for n in lora if "lora_B" in n and not torch.equal(before[n], after[n])]
    assert len(changed) == len([n for n in lora if "lora_B" in n])


def labelled_spans(batch) -> list[list[int]]:
    """Runs of consecutive labelled positions of the (single, packed) row as lists of token ids."""
    spans, current = [], []
    for label in batch["labels"][0].tolist():
        if label == -100:
            if current:
                spans.append(current)
            current = []
        else:
            current.append(label)
    return spans + ([current] if current else [])


def test_the_loss_mask_covers_exactly_the_persona_tokens(tiny_model_dir, tiny_tokenizer, tmp_path):
    rows = [conversation(i) for i in range(6)]
    trainer = tiny_trainer(tiny_model_dir, tiny_tokenizer, tmp_path, rows, early_stopping_patience=0)
    batches = list(trainer.get_train_dataloader())
    got = sorted(tiny_tokenizer.decode(span) for batch in batches for span in labelled_spans(batch))
    # each persona turn's content and the template's turn closing (Gemma's "<end_of_turn>" and its newline)
    expected = sorted(m["content"] + "<end_of_turn>\n" for row in rows for m in row["messages"]
                      if m["role"] == "assistant")
    assert got == expected


def test_all_turns_puts_loss_on_every_token_but_the_first_of_each_sample(tiny_model_dir, tiny_tokenizer, tmp_path):
    rows = [conversation(i) for i in range(4)]
    trainer = tiny_trainer(tiny_model_dir, tiny_tokenizer, tmp_path, rows, persona_only_loss=False)
    batch = next(iter(trainer.get_train_dataloader()))
    unlabelled = (batch["labels"][0] == -100).nonzero().flatten().tolist()
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist()
    assert unlabelled == starts  # only each sample's first token (it has nothing before it to be predicted from)


def test_packed_samples_do_not_attend_to_each_other(tiny_model_dir, tiny_tokenizer, tmp_path):
    import torch

    from talkalike.model import load_base
    from talkalike.template import render_sample

    model = load_base(str(tiny_model_dir), tmp_path).eval()
    a = render_sample(conversation(0)["messages"], tiny_tokenizer).input_ids
    b = render_sample(conversation(1)["messages"], tiny_tokenizer).input_ids
    packed = torch.tensor([a + b])
    restart = torch.tensor([list(range(len(a))) + list(range(len(b)))])
    # use_cache=False as in training: transformers detects packed rows from position ids only without a cache
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([b]), use_cache=False).logits[0]
        together = model(input_ids=packed, position_ids=restart, use_cache=False).logits[0, len(a):]
        leaky = model(input_ids=packed, position_ids=torch.arange(len(a) + len(b))[None],
                      use_cache=False).logits[0, len(a):]
    assert torch.allclose(alone, together, atol=1e-5)
    assert not torch.allclose(alone, leaky, atol=1e-3)  # the check can fail: plain concatenation leaks


def test_the_masked_head_loss_equals_the_full_vocabulary_loss(tiny_model_dir, tiny_tokenizer, tmp_path):
    import torch

    trainer = tiny_trainer(tiny_model_dir, tiny_tokenizer, tmp_path, [conversation(i) for i in range(6)])
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.eval()
    with torch.no_grad():
        ours = trainer.compute_loss(trainer.model, dict(batch))
        full = trainer.model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                             use_cache=False).logits[0, :-1]
        labels = batch["labels"][0, 1:]
        reference = torch.nn.functional.cross_entropy(full.float(), labels, ignore_index=-100)
    assert torch.allclose(ours, reference, atol=1e-5)


def test_the_trainer_counts_parameters_for_its_flops_once_and_reads_no_loss_for_a_nan_filter(
        tiny_model_dir, tiny_tokenizer, tmp_path, monkeypatch):
    """Trainer's FLOP estimate is its own (6 x tokens x parameters), with the parameters counted once, not after
    every micro-batch; and no NaN filter reads each loss on the host (a wait for the whole backward pass)."""
    from transformers import Trainer

    trainer = tiny_trainer(tiny_model_dir, tiny_tokenizer, tmp_path, [conversation(i) for i in range(6)])
    batch = dict(next(iter(trainer.get_train_dataloader())))
    expected = Trainer.floating_point_ops(trainer, batch)
    assert expected > 0
    counts = []
    base = type(trainer.model.get_base_model())  # the PEFT model hands the call to its base
    own = base.num_parameters
    monkeypatch.setattr(base, "num_parameters",
                        lambda self, *args, **kwargs: counts.append(1) or own(self, *args, **kwargs))
    assert [trainer.floating_point_ops(batch) for _ in range(3)] == [expected] * 3
    assert len(counts) == 1
    assert trainer.args.logging_nan_inf_filter is False


def test_the_trainer_walks_the_model_once_to_unwrap_it_clip_its_gradients_and_zero_them(
        tiny_model_dir, tiny_tokenizer, tmp_path, monkeypatch):
    """Unwrapping, gradient clipping and zeroing find the model's trained tensors once (Trainer walks every module
    for each, each step), with Trainer's own norm, clipped gradients and cleared gradients."""
    import torch
    from transformers import Trainer

    from talkalike.train.trainer import zeroing_trained_only

    trainer = tiny_trainer(tiny_model_dir, tiny_tokenizer, tmp_path, [conversation(i) for i in range(6)])
    trainer.args.max_grad_norm = 1e-3  # small enough to clip
    model = trainer.model
    batch = dict(next(iter(trainer.get_train_dataloader())))
    trainer.compute_loss(model, dict(batch)).backward()
    trained = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad.clone() for p in trained]
    assert trained and all(p.grad is None for p in model.parameters() if not p.requires_grad)
    expected = Trainer._clip_grad_norm(trainer, model)
    clipped = [p.grad.clone() for p in trained]
    assert any(not torch.equal(after, before) for after, before in zip(clipped, grads, strict=True))
    for param, grad in zip(trained, grads, strict=True):
        param.grad = grad.clone()

    unwrapped = trainer.accelerator.unwrap_model(model)

    def no_walk(*args, **kwargs):
        raise AssertionError("walked the model's modules again")

    with monkeypatch.context() as patch:
        patch.setattr(torch.nn.Module, "named_modules", no_walk)
        patch.setattr(torch.nn.Module, "modules", no_walk)
        assert torch.equal(trainer._clip_grad_norm(model), expected)
        for param, grad in zip(trained, clipped, strict=True):
            assert torch.equal(param.grad, grad)
        assert trainer._walked(model)[0] is unwrapped
        trainer.compute_loss(model, dict(batch))  # unwraps without a walk
    with zeroing_trained_only(model):
        model.zero_grad(set_to_none=False)  # in place: torch's own
        assert all(p.grad is not None and not p.grad.any() for p in trained)
        with monkeypatch.context() as patch:
            patch.setattr(torch.nn.Module, "named_modules", no_walk)
            model.zero_grad()
        assert all(p.grad is None for p in model.parameters())
    assert "zero_grad" not in vars(model)  # torch's again


def test_triton_s_speedups_are_left_out_where_triton_is_not_installed(monkeypatch):
    import importlib.util

    from talkalike.train.trainer import SPEEDUPS, TRITON_SPEEDUPS, available_speedups

    assert set(TRITON_SPEEDUPS) <= set(SPEEDUPS)
    assert available_speedups(SPEEDUPS) == set(SPEEDUPS)  # (this machine has Triton: the tests run its interpreter)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "triton" else real(name, *args))
    assert available_speedups(SPEEDUPS) == set(SPEEDUPS) - set(TRITON_SPEEDUPS)


@pytest.mark.parametrize("native", [True, False])
def test_a_cpu_trains_in_bf16_only_with_native_bf16_instructions_and_says_so(native, monkeypatch):
    import talkalike.train.recipe

    monkeypatch.setattr(talkalike.train.recipe, "cpu_computes_bf16", lambda: native)
    recipe, notes = resolve_recipe("default", cuda=False)
    assert recipe.bf16 is native
    assert any(("bf16 on this CPU" if native else "fp32 instead of bf16") in note for note in notes)
    gpu, gpu_notes = resolve_recipe("default", cuda=True)
    assert gpu.bf16 and not any("bf16" in note for note in gpu_notes)


def test_the_frozen_head_loss_gives_the_plain_loss_and_gradient_chunk_by_chunk():
    import torch

    from talkalike.train.headloss import frozen_head_loss_sum

    torch.manual_seed(0)
    weight = torch.randn(50, 8)
    hidden = torch.randn(7, 8, requires_grad=True)
    targets = torch.randint(0, 50, (7,))
    ours = frozen_head_loss_sum(hidden, weight, targets, chunk_rows=3)  # three chunks, the last one short
    (ours * 0.5).backward()
    ours_grad = hidden.grad.clone()
    hidden.grad = None
    plain = torch.nn.functional.cross_entropy(hidden @ weight.T, targets, reduction="sum")
    (plain * 0.5).backward()
    assert torch.allclose(ours, plain, atol=1e-5)
    assert torch.allclose(ours_grad, hidden.grad, atol=1e-6)


def test_the_frozen_head_loss_trains_replaced_token_rows_as_the_merged_head_would():
    import torch

    from talkalike.train.headloss import frozen_head_loss_sum

    torch.manual_seed(1)
    weight = torch.randn(50, 8)
    row_ids = [3, 41]
    rows = torch.randn(2, 8, requires_grad=True)
    hidden = torch.randn(9, 8, requires_grad=True)
    targets = torch.tensor([3, 41, 0, 7, 41, 3, 12, 49, 5])
    ours = frozen_head_loss_sum(hidden, weight, targets, chunk_rows=4, rows=rows, row_ids=row_ids)
    ours.backward()
    ours_grads = hidden.grad.clone(), rows.grad.clone()
    hidden.grad, rows.grad = None, None
    merged = weight.index_copy(0, torch.tensor(row_ids), rows)  # what peft's trainable tokens compute
    plain = torch.nn.functional.cross_entropy(hidden @ merged.T, targets, reduction="sum")
    plain.backward()
    assert torch.allclose(ours, plain, atol=1e-5)
    assert torch.allclose(ours_grads[0], hidden.grad, atol=1e-5)
    assert torch.allclose(ours_grads[1], rows.grad, atol=1e-5)


@pytest.mark.parametrize("turn_end", [False, True])
def test_training_gradients_through_the_deferred_head_equal_the_full_vocabulary_ones(turn_end, tiny_model_dir,
                                                                                    tiny_tokenizer, tmp_path):
    import torch

    from talkalike.template import turn_end_ids

    ids = turn_end_ids(tiny_tokenizer) if turn_end else None
    trainer = tiny_trainer(tiny_model_dir, tiny_tokenizer, tmp_path, [conversation(i) for i in range(6)],
                           lora_dropout=0.0, turn_end_ids=ids)
    batch = next(iter(trainer.get_train_dataloader()))
    model = trainer.model
    assert _frozen_plain_head(model)  # the CPU path under test: the head's gradient taken in the forward
    lora = {name: p for name, p in model.named_parameters() if p.requires_grad}
    trainer.compute_loss(model, dict(batch)).backward()
    ours = {name: p.grad.clone() for name, p in lora.items()}
    model.zero_grad()
    full = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0, :-1]
    torch.nn.functional.cross_entropy(full.float(), batch["labels"][0, 1:], ignore_index=-100).backward()
    assert any(g.abs().sum() > 0 for g in ours.values())
    assert turn_end == any("trainable_tokens" in name for name in lora)  # the turn-end rows train when asked
    for name, p in lora.items():
        assert torch.allclose(ours[name], p.grad, atol=1e-6, rtol=1e-4), name


class Interrupt:
    """A callback that kills training (like Ctrl-C) when a given optimizer step ends."""

    def __new__(cls, at_step: int):
        from transformers import TrainerCallback

        class _Interrupt(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == at_step:
                    raise KeyboardInterrupt

        return _Interrupt()


def adapter_weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def test_resume_after_an_interruption_ends_where_an_uninterrupted_run_ends(tiny_model_dir, tmp_path):
    import torch

    data = write_dataset(tmp_path / "ds", n_train=40, n_eval=4)
    home = tmp_path / "home"
    common = {"base": str(tiny_model_dir), "epochs": 2.0, "progress": False, "force": True}  # a toy dataset
    straight = train(data, home, name="straight", **common)

    with pytest.raises(KeyboardInterrupt):
        train(data, home, name="broken", callbacks=[Interrupt(3)], **common)
    assert not (home / "runs" / "broken").exists()
    assert [p.name for p in (home / "runs" / "broken.partial" / "checkpoints").glob("checkpoint-*")] == ["checkpoint-2"]
    resumed = train(None, home, resume="broken", progress=False)

    assert resumed == home / "runs" / "broken" and not (home / "runs" / "broken.partial").exists()
    info_straight = json.loads((straight / "run.json").read_text())
    info_resumed = json.loads((resumed / "run.json").read_text())
    assert info_straight["steps"] == info_resumed["steps"] == 4
    a, b = adapter_weights(straight), adapter_weights(resumed)
    assert a.keys() == b.keys() and a
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    steps = [json.loads(line)["step"] for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)  # nothing logged twice across the interruption


def test_the_run_folder_holds_exactly_the_expected_files(tiny_model_dir, dataset, tmp_path, capsys):
    home = tmp_path / "home"
    code = main(["--home", str(home), "train", "--force", str(dataset), "--base", str(tiny_model_dir), "--name", "noa",
                 "--epochs", "2"])
    captured = capsys.readouterr()
    run = home / "runs" / "noa"
    assert code == 0
    assert captured.out.strip() == str(run)  # stdout is the result; the rest went to stderr
    assert "trainable parameters:" in captured.err
    assert "config: {" not in captured.err  # the resolved config is in run.json; --verbose prints it
    assert captured.err.strip().splitlines()[-1].endswith("→ next: talkalike eval noa")
    # the last step answered training turns with the new twin and wrote its habit scales (evaluate/calibrate.py)
    assert "habits calibrated on " in captured.err
    assert sorted(p.name for p in run.iterdir()) == sorted(RUN_FILES + (GENERATION_FILE,))
    calibration = json.loads((run / GENERATION_FILE).read_text())[RECORD]
    assert calibration["training turns"] > 0 and 0 < calibration["emoji"]["scale"] and calibration["messages"] > 0
    assert sorted(p.name for p in (home / "runs").iterdir()) == ["noa"]  # checkpoints removed
    info = json.loads((run / "run.json").read_text())
    assert info["base"]["id"] == str(tiny_model_dir) and info["base"]["revision"]
    assert info["layout"] == "chat" and info["preset"] == "default" and info["quantized"] is False
    assert info["device"] == "cpu" and info["config"]["lora_r"] == 16
    dtype = "bf16" if cpu_computes_bf16() else "fp32"  # this machine's choice, said in a note, never silently
    assert info["dtype"] == dtype and any(dtype in note for note in info["notes"])
    assert info["dataset"] == str(dataset.resolve())
    assert (run / "eval.jsonl").read_text() == (dataset / "eval.jsonl").read_text()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in records) and any("eval_loss" in r for r in records)
    assert all({"learning_rate", "tokens_per_s", "memory_gb"} <= r.keys() for r in records if "loss" in r)
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert "<start_of_turn>" in (run / "tokenizer" / "chat_template.jinja").read_text()
    stats = json.loads((run / "dataset_stats.json").read_text())
    assert stats["train"]["samples"] == 12 and 0 < stats["train"]["trained_tokens"] < stats["train"]["tokens"]


def test_a_finished_run_loads_with_its_adapter_switchable(tiny_model_dir, dataset, tmp_path):
    import torch

    from talkalike.model import load_run

    run = train(dataset, tmp_path / "home", base=str(tiny_model_dir), name="r", epochs=3.0, progress=False,
                force=True)
    model, tokenizer, loaded = load_run(run, tmp_path / "home")
    ids = torch.tensor([tokenizer("hey what's up?")["input_ids"]])
    with torch.no_grad():
        tuned = model(input_ids=ids).logits
        with model.disable_adapter():
            base = model(input_ids=ids).logits
    assert loaded.name == "r"
    assert not torch.allclose(tuned, base)


@pytest.mark.parametrize("setup, message", [
    ("missing", "no dataset folder"),
    ("empty", "no training samples"),
    ("bad-base", "no model folder"),
])
def test_bad_input_is_one_error_line_exit_2_and_nothing_written(setup, message, tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "ds"
    base = str(tiny_model_dir)
    if setup == "empty":
        data.mkdir()
        (data / "train.jsonl").write_text("")
    elif setup == "bad-base":
        write_dataset(data)
        base = str(tmp_path / "no-such-model")
    home = tmp_path / "home"
    code = main(["--home", str(home), "train", "--force", str(data), "--base", base, "--name", "x"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: ") and message in err[-1]
    assert not (home / "runs").exists() or not list((home / "runs").iterdir())


@pytest.mark.parametrize("budget", ["lots", "0", "-3", "inf", "nan"])
def test_a_memory_budget_that_is_not_gb_is_one_error_line(budget, tiny_model_dir, dataset, tmp_path, capsys):
    home = tmp_path / "home"
    code = main(["--home", str(home), "train", "--force", str(dataset), "--base", str(tiny_model_dir), "--name", "x",
                 "--memory-budget", budget])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: --memory-budget takes GB")
    assert not (home / "runs").exists()


def test_a_memory_budget_reaches_the_recipe_and_auto_is_most_of_the_card(monkeypatch):
    from dataclasses import replace
    from types import SimpleNamespace

    import torch

    from talkalike.train.recipe import parse_memory_budget
    from talkalike.train.trainer import memory_budget_gb

    assert [parse_memory_budget(text) for text in (None, "auto", "24", "7.5")] == [None, "auto", 24.0, 7.5]
    recipe, _ = resolve_recipe(None, cuda=True, memory_budget_gb=24.0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=40e9))
    assert memory_budget_gb(recipe) == 24.0 and memory_budget_gb(resolve_recipe(None, cuda=True)[0]) is None
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=80e9))
    assert memory_budget_gb(replace(recipe, memory_budget_gb="auto")) == pytest.approx(80.0)
    assert memory_budget_gb(replace(recipe, memory_budget_gb=200.0)) == pytest.approx(80.0)  # no more than the card


def test_out_of_memory_is_a_user_error_that_points_at_plan(tiny_model_dir, dataset, tmp_path, monkeypatch, capsys):
    import torch
    import transformers

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(transformers.Trainer, "train", oom)
    home = tmp_path / "home"
    code = main(["--home", str(home), "train", "--force", str(dataset), "--base", str(tiny_model_dir), "--name", "x"])
    assert code == 2
    assert "talkalike plan" in capsys.readouterr().err
    assert not (home / "runs" / "x").exists()


@pytest.mark.slow
def test_the_embedded_model_trains_a_few_steps_end_to_end(tmp_path):
    data = write_dataset(tmp_path / "ds", n_train=6, n_eval=2)
    home = tmp_path / "home"
    assert main(["--home", str(home), "train", "--force", str(data), "--name", "e2e", "--max-steps", "2"]) == 0
    info = json.loads((home / "runs" / "e2e" / "run.json").read_text())
    assert info["base"]["id"] == "gemma-3-270m" and info["steps"] == 2
    assert info["trainable_params"] > 1_000_000


def test_the_original_preset_trains_a_lora_on_lm_head_without_a_gpu(tiny_model_dir, dataset, tmp_path, capsys):
    from safetensors.torch import load_file

    home = tmp_path / "home"
    code = main(["--home", str(home), "train", "--force", str(dataset), "--base", str(tiny_model_dir), "--name", "orig",
                 "--preset", "original", "--max-steps", "2"])
    err = capsys.readouterr().err
    assert code == 0
    assert "without 4-bit quantization" in err and "adamw_torch instead of paged_adamw_8bit" in err  # said, not silent
    info = json.loads((home / "runs" / "orig" / "run.json").read_text())
    assert info["preset"] == "original" and info["quantized"] is False and info["config"]["lora_r"] == 32
    weights = load_file(str(home / "runs" / "orig" / "adapter" / "adapter_model.safetensors"))
    assert any("lm_head.lora_A" in name for name in weights)


def dated(i: int) -> dict:
    return conversation(i) | {"start": f"2025-01-{i + 1:02d}T10:00:00", "id": f"Maya@{i}"}


def test_recalled_exchanges_lengthen_samples_but_add_no_trained_token(tiny_tokenizer, tmp_path):
    from talkalike.memory import Memory

    rows = [dated(i) for i in range(12)]
    memory = Memory.build(rows, tmp_path / "memory.db")
    plain, plain_stats = render_rows(rows, tiny_tokenizer, "chat", False, 512)
    recalled, stats = render_rows(rows, tiny_tokenizer, "chat", False, 512, memory, 3)
    assert stats["trained_tokens"] == plain_stats["trained_tokens"]
    assert stats["tokens"] > plain_stats["tokens"]
    assert recalled[0]["input_ids"] == plain[0]["input_ids"]  # the first conversation has nothing earlier to recall
    assert len(recalled[5]["input_ids"]) > len(plain[5]["input_ids"])


@pytest.mark.parametrize("recalled", [3, 0])
def test_a_run_keeps_the_datasets_memory_and_names_its_contacts(tiny_model_dir, tmp_path, capsys, monkeypatch, recalled):
    """Also when training recalls nothing: chat and eval still recall, steer and cap messages from the run's memory."""
    from dataclasses import replace

    from talkalike.memory import MEMORY_FILE, Memory
    from talkalike.run import Run
    from talkalike.train import recipe

    monkeypatch.setitem(recipe.PRESETS, "default", replace(recipe.PRESETS["default"], memories=recalled))

    folder = write_dataset(tmp_path / "ds")
    rows = [dated(i) for i in range(12)]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    Memory.build(rows, folder / MEMORY_FILE)
    (folder / "dataset.json").write_text(json.dumps({"persona": "Noa", "layout": "chat", "contact": True}))
    (folder / "stats.json").write_text(json.dumps({"contacts": {"Maya": {"persona_turns": 20}, "Mom": {}}}))
    home = tmp_path / "home"
    assert main(["--home", str(home), "train", "--force", str(folder), "--base", str(tiny_model_dir), "--name", "noa",
                 "--max-steps", "1"]) == 0
    run = Run.open(home / "runs" / "noa")
    assert sorted(p.name for p in run.dir.iterdir()) == sorted(RUN_FILES + (MEMORY_FILE, GENERATION_FILE))
    assert run.contacts == ["Maya", "Mom"]
    assert len(Memory.open(run.dir)) == len(Memory.open(folder))


def test_a_dataset_too_small_to_learn_from_is_refused_without_force(tiny_model_dir, tmp_path, capsys):
    data = write_dataset(tmp_path / "ds", n_train=2, n_eval=1)  # a 3-conversation chat, a handful of messages
    home = tmp_path / "home"
    code = main(["--home", str(home), "train", str(data), "--base", str(tiny_model_dir), "--name", "x"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: too little to learn from") and "--force" in err[0]
    assert "3 conversations (at least 20 needed)" in err[0]
    assert not (home / "runs").exists() or not list((home / "runs").iterdir())


def test_train_force_replaces_a_run_only_once_the_new_one_is_complete(tiny_model_dir, dataset, tmp_path, monkeypatch,
                                                                      capsys):
    import torch
    import transformers

    home = tmp_path / "home"
    old = home / "runs" / "noa"
    old.mkdir(parents=True)
    (old / "run.json").write_text(json.dumps({"name": "noa", "marker": "the old run"}))
    argv = ["--home", str(home), "train", str(dataset), "--base", str(tiny_model_dir), "--name", "noa",
            "--max-steps", "1"]
    assert main(argv) == 2  # without --force: refused
    assert "already exists" in capsys.readouterr().err

    real_train = transformers.Trainer.train

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("out of memory")

    monkeypatch.setattr(transformers.Trainer, "train", oom)
    assert main(argv + ["--force"]) == 2
    assert json.loads((old / "run.json").read_text())["marker"] == "the old run"  # a failed retrain keeps it

    monkeypatch.setattr(transformers.Trainer, "train", real_train)
    assert main(argv + ["--force"]) == 0
    info = json.loads((old / "run.json").read_text())
    assert "marker" not in info and info["steps"] == 1
    assert sorted(p.name for p in (home / "runs").iterdir()) == ["noa"]  # the old one gone, no leftovers


def test_a_small_chat_gets_whole_extra_epochs_up_to_the_cap_and_an_explicit_epochs_is_kept():
    from talkalike.train.recipe import PRESETS, epochs_for, resolve_recipe

    default = PRESETS["default"]
    assert epochs_for(default, 51) == 2.0  # 51 steps an epoch: two passes reach 100 steps
    assert epochs_for(default, 27) == 3.0  # four passes would be needed: capped at three
    assert epochs_for(default, 400) == 1.0  # a large chat: one pass
    recipe, _ = resolve_recipe("default", cuda=False, epochs=1.0)
    assert epochs_for(recipe, 27) == 1.0  # --epochs 1 means one
    assert epochs_for(PRESETS["original"], 5) == PRESETS["original"].epochs  # the original's recipe as it was


def test_the_trainer_sets_the_passes_from_the_packed_rows(tiny_model_dir, tiny_tokenizer, tmp_path):
    import math

    trainer = tiny_trainer(tiny_model_dir, tiny_tokenizer, tmp_path, [conversation(i) for i in range(6)],
                           min_steps=40, max_epochs=5.0, epochs=1.0)
    per_epoch = math.ceil(len(trainer.train_dataset) / (trainer.args.per_device_train_batch_size
                                                        * trainer.args.gradient_accumulation_steps))
    assert trainer.args.num_train_epochs == min(5.0, math.ceil(40 / per_epoch)) > 1.0
