"""The GPU benchmark's do-it-yourself baseline (benchmarks/gpu_train.py, variant trl-liger), built on the CPU without
training: TRL's packing into padding-free rows, Liger switched on, the CUDA recipe's batch geometry, and TRL's own LoRA
on the seven projections. The timing itself needs a GPU (BENCHMARKS.md, "GPU training")."""

from pathlib import Path

import pytest
import torch
from conftest import load_script

from talkalike.train.recipe import resolve_recipe

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gpu_train():
    return load_script(ROOT / "benchmarks" / "gpu_train.py")


def test_the_baseline_config_packs_padding_free_with_liger_and_the_recipes_batches(gpu_train, tmp_path):
    config = gpu_train.trl_liger_config(str(tmp_path), use_cpu=True)
    recipe, _ = resolve_recipe(None, cuda=True)
    assert (config.packing, config.packing_strategy, config.padding_free) == (True, "bfd", True)
    assert config.use_liger_kernel
    assert (config.per_device_train_batch_size, config.gradient_accumulation_steps, config.max_length) == \
        (recipe.batch_size, recipe.grad_accum, recipe.max_length)
    assert (config.optim, config.bf16, config.learning_rate) == (recipe.optim, recipe.bf16, recipe.learning_rate)
    assert config.include_num_input_tokens_seen == "non_padding"


def test_the_baseline_trainer_adapts_the_projections_and_feeds_packed_rows_with_position_ids(gpu_train, tmp_path):
    from transformers import AutoModelForCausalLM, MistralConfig

    config = MistralConfig(vocab_size=1200, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    assert model.config._attn_implementation == "sdpa"
    rows = gpu_train.make_rows(config.vocab_size, 12)
    trainer = gpu_train.trl_liger_trainer(model, rows, config.vocab_size, [], use_cpu=True)
    adapted = {name.rsplit(".", 1)[-1] for name, module in trainer.model.named_modules() if hasattr(module, "lora_A")}
    assert adapted == set(gpu_train.TARGETS) - {"lm_head"}
    batch = next(iter(trainer.get_train_dataloader()))
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] == 1  # padding-free: one flat row
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist()
    assert len(starts) >= 2 and starts[0] == 0  # several samples packed, each counting its positions from 0
    lengths = [len(r["input_ids"]) for r in rows]
    pieces = torch.diff(torch.tensor(starts + [batch["input_ids"].shape[1]])).tolist()
    assert all(piece in lengths for piece in pieces)  # whole samples, none cut or padded
    # Loss on every token: labels are the inputs, except each sample's first (nothing predicts it).
    expected = batch["input_ids"][0].clone()
    expected[starts] = -100
    assert torch.equal(batch["labels"][0], expected)


def test_every_row_the_gpu_session_script_asks_for_is_one_gpu_train_knows(gpu_train):
    """A device call is scarce: a misspelt row in benchmarks/gpu_session.sh would cost one. Each of its gpu_train.py
    calls names rows (its defaults, after any `${VARIANTS:-`) that gpu_train.py defines."""
    import re

    script = (ROOT / "benchmarks" / "gpu_session.sh").read_text().replace("\\\n", "")
    calls = [line for line in script.splitlines() if "benchmarks/gpu_train.py" in line and "--variants" in line]
    assert len(calls) >= 5
    for line in calls:
        names = re.search(r'--variants\s+"?(?:\$\{\w+:-)?([\w,-]+)', line).group(1).split(",")
        unknown = [name for name in names if name not in gpu_train.VARIANTS]
        assert names and not unknown, (unknown, line)


def test_every_gpu_test_word_the_gpu_session_script_selects_names_a_gpu_test():
    """Likewise its `pytest -k` words: each must select some test of tests/test_gpu.py (a word that selects nothing
    would leave a new path untested on the call meant to test it)."""
    import re

    script = (ROOT / "benchmarks" / "gpu_session.sh").read_text().replace("\\\n", "")
    gpu_tests = (ROOT / "tests" / "test_gpu.py").read_text()
    names = re.findall(r"^def (test_\w+)", gpu_tests, flags=re.M)
    names += re.findall(r'ids=\[([^\]]*)\]', gpu_tests)  # parametrize ids count as part of a test's name
    selections = [s for s in re.findall(r'-k\s+"(?:\$\{\w+:-)?([^"}]+)', script) if not s.startswith("$")]
    assert len(selections) >= 4
    for selection in selections:
        for word in selection.split(" or "):
            assert any(word.strip() in name for name in names), (word, selection)


def test_the_walks_row_gives_back_trainer_s_own_unwrapping_clipping_and_zeroing(gpu_train, tiny_model_dir,
                                                                               tiny_tokenizer, tmp_path, monkeypatch):
    """ours-persona-walks times what PersonaTrainer's single walk saves: its trainer walks the model as Trainer does."""
    from transformers import Trainer

    from talkalike.train import trainer as trainer_module
    from tests.train.test_train import conversation, tiny_trainer

    trainer = tiny_trainer(tiny_model_dir, tiny_tokenizer, tmp_path, [conversation(i) for i in range(4)])
    gpu_train.trainer_walks(trainer)
    assert trainer._clip_grad_norm.__func__ is Trainer._clip_grad_norm
    walks = []
    own = trainer.accelerator.unwrap_model
    monkeypatch.setattr(trainer.accelerator, "unwrap_model", lambda model, *a, **k: walks.append(1) or own(model))
    trainer._walked(trainer.model)
    trainer._walked(trainer.model)
    assert len(walks) == 2
    zeroing = []
    monkeypatch.setattr(trainer_module, "zeroing_trained_only", lambda model: zeroing.append(model))
    trainer.args.max_steps, trainer.args.save_strategy = 1, "no"
    trainer.train()
    assert zeroing == []
