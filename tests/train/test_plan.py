"""`talkalike plan`: counts from the config alone on the meta device, and a memory estimate with a verdict."""

import json

from talkalike.cli import main

# Mistral-7B's architecture with the 64,000-token vocabulary of yam-peleg/Hebrew-Mistral-7B (the original's base)
MISTRAL_7B_64K = {
    "architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "vocab_size": 64000, "max_position_embeddings": 32768, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
}


def plan_json(capsys, home, *argv) -> dict:
    assert main(["--home", str(home), "plan", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_original_recipe_on_mistral_7b_trains_86_065_152_parameters(tmp_path, capsys):
    folder = tmp_path / "mistral"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(MISTRAL_7B_64K))  # only a config: no weights anywhere
    result = plan_json(capsys, tmp_path, "--base", str(folder), "--preset", "original", "--no-timing")
    assert result["trainable_params"] == 86_065_152
    # Mistral-7B has 7,241,732,096 parameters at 32k vocab; 32k more rows in embedding and head, plus the LoRA
    assert result["total_params"] == 7_241_732_096 + 2 * 32_000 * 4096 + 86_065_152
    assert result["peak_memory_gb"] > 5
    # 4-bit weights make the GPU estimate far smaller than the fp32 CPU one
    gpu = result.get("peak_memory_gb_on_cuda", result["peak_memory_gb"])
    assert gpu < 16 and gpu < result["peak_memory_gb"] or result["hardware"]["device"] == "cuda"


def test_plan_reports_counts_memory_and_a_verdict_for_a_local_model(tiny_model_dir, tmp_path, capsys):
    result = plan_json(capsys, tmp_path, "--base", str(tiny_model_dir))
    assert {"trainable_params", "total_params", "peak_memory_gb", "fits", "hardware"} <= result.keys()
    assert 0 < result["trainable_params"] < result["total_params"]
    assert result["fits"] is True and result["preset"] == "default"
    # no CUDA here: the plan says the preference stage is skipped, as training will
    assert result["preference_pairs"] == 0 and any("no preference tuning" in note for note in result["notes"])


def test_plan_on_a_gpu_says_the_preference_stage_is_not_in_the_time(tiny_model_dir, tmp_path, capsys, monkeypatch):
    from talkalike.train import plan

    monkeypatch.setattr(plan, "detect_hardware", lambda: {"device": "cuda", "name": "a GPU", "memory_gb": 80.0})
    assert main(["--home", str(tmp_path), "plan", "--base", str(tiny_model_dir), "--preset", "default",
                 "--no-timing"]) == 0
    assert "then preference tuning (DPO) on up to 2,000 pairs" in capsys.readouterr().out


def test_gradient_checkpointing_and_longer_sequences_move_the_estimate(tiny_model_dir, tmp_path):
    from dataclasses import replace

    from talkalike.train.plan import estimate, load_config
    from talkalike.train.recipe import PRESETS

    config = load_config(str(tiny_model_dir), tmp_path)
    recipe = PRESETS["default"]
    short = estimate(config, recipe, "cpu", 256)["peak_memory_gb"]
    long = estimate(config, recipe, "cpu", 1024)["peak_memory_gb"]
    checkpointed = estimate(config, replace(recipe, gradient_checkpointing=True), "cpu", 1024)["peak_memory_gb"]
    assert short < long and checkpointed <= long


def test_offloaded_checkpoints_leave_the_gpu_estimate_and_are_counted_on_the_host(tmp_path):
    from dataclasses import replace

    from talkalike.train.plan import estimate, load_config
    from talkalike.train.recipe import PRESETS

    folder = tmp_path / "mistral"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(MISTRAL_7B_64K))
    config = load_config(str(folder), tmp_path)
    recipe = PRESETS["original"]
    offloaded = estimate(config, recipe, "cuda", 1024)
    kept = estimate(config, replace(recipe, offload_checkpoints=False), "cuda", 1024)
    moved = offloaded["memory_gb"]["offloaded_to_host"]
    assert moved > 0 and kept["memory_gb"]["offloaded_to_host"] == 0
    # the recipe's rows x 1,024 tokens x 4,096 x bf16 for each of 32 layers on the host; on the GPU one layer's a time
    one_layer = recipe.batch_size * 1024 * 4096 * 2 / 1e9
    assert abs(moved - 32 * one_layer) < 1e-3
    assert abs(kept["peak_memory_gb"] - offloaded["peak_memory_gb"] - 31 * one_layer) < 0.02
    # A CPU has no host to offload to: the same recipe keeps its checkpoints where they are.
    assert estimate(config, recipe, "cpu", 1024)["memory_gb"]["offloaded_to_host"] == 0


def test_an_unknown_base_is_one_error_line_with_exit_2(tmp_path, capsys):
    assert main(["--home", str(tmp_path), "plan", "--base", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.startswith("error: no model folder")


def test_plan_estimates_the_training_time_from_a_pass_timed_on_this_machine(tiny_model_dir, tmp_path, capsys):
    assert main(["--home", str(tmp_path), "plan", "--base", str(tiny_model_dir)]) == 0
    out = capsys.readouterr().out
    assert "training time here: ~" in out and "of the bundled sample chat (93,513 tokens an epoch" in out
    assert "how: one decoder layer of this model trained on" in out
    timing = plan_json(capsys, tmp_path, "--base", str(tiny_model_dir))["time"]
    assert timing["tokens_per_s"] > 0 and timing["timed_seconds"] > 0
    assert timing["seconds"] == round(timing["epoch_tokens"] * timing["epochs"] / timing["tokens_per_s"])
    assert "time" not in plan_json(capsys, tmp_path, "--base", str(tiny_model_dir), "--no-timing")


def test_the_time_estimate_scales_with_the_dataset_and_the_models_size(tiny_model_dir, tmp_path, capsys):
    from talkalike.train.plan import load_config
    from talkalike.train.speed import step_flops_per_token

    folder = tmp_path / "ds"
    folder.mkdir()
    row = {"messages": [{"role": "user", "content": "hey what's up"}, {"role": "assistant", "content": "ok haha"}]}
    (folder / "train.jsonl").write_text((json.dumps(row) + "\n") * 100)
    small = plan_json(capsys, tmp_path, "--base", str(tiny_model_dir), "--dataset", str(folder))["time"]
    (folder / "train.jsonl").write_text((json.dumps(row) + "\n") * 300)
    large = plan_json(capsys, tmp_path, "--base", str(tiny_model_dir), "--dataset", str(folder))["time"]
    assert small["epoch_tokens"] > 0 and abs(large["epoch_tokens"] - 3 * small["epoch_tokens"]) <= 3  # rounding
    # Work per token grows with layers and checkpointing's recomputation.
    config = load_config(str(tiny_model_dir), tmp_path)
    two, _ = step_flops_per_token(config, 2, 0.5, 256, checkpointing=False)
    four, _ = step_flops_per_token(config, 4, 0.5, 256, checkpointing=False)
    recomputed, _ = step_flops_per_token(config, 4, 0.5, 256, checkpointing=True)
    assert two < four < recomputed


def test_plan_of_a_missing_dataset_is_one_error_line(tiny_model_dir, tmp_path, capsys):
    assert main(["--home", str(tmp_path), "plan", "--base", str(tiny_model_dir), "--dataset", str(tmp_path / "no")]) == 2
    assert capsys.readouterr().err.startswith("error: no dataset at")


def test_a_memory_budget_keeps_as_many_of_the_last_layers_whole_as_the_estimate_fits(tmp_path):
    """Selective recomputation: on a budget the estimate decides how many layers run whole (not recomputed), within
    90% of it as `plan` judges a fit; one layer more would not fit, and a budget under the all-recomputed estimate
    keeps none."""
    from dataclasses import replace

    from talkalike.train.plan import USABLE, estimate, layer_activation_bytes, load_config, whole_layers
    from talkalike.train.recipe import PRESETS

    folder = tmp_path / "mistral"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(MISTRAL_7B_64K))
    config = load_config(str(folder), tmp_path)
    recipe = PRESETS["original"]
    recomputed = estimate(config, recipe, "cuda")["peak_memory_gb"]
    assert estimate(config, recipe, "cuda", whole=1)["peak_memory_gb"] == recomputed  # its activations, the replay's
    layer = layer_activation_bytes(config, recipe) / 1e9
    assert abs(estimate(config, recipe, "cuda", whole=5)["peak_memory_gb"] - recomputed - 4 * layer) < 0.02
    assert whole_layers(config, recipe, recomputed) == 0  # (90% of it)
    assert whole_layers(config, recipe, 1000) == 32
    counts = []
    for budget in (12, 24, 40):
        whole = whole_layers(config, recipe, budget)
        assert 0 < whole < 32
        assert estimate(config, recipe, "cuda", whole=whole)["peak_memory_gb"] <= USABLE * budget
        assert estimate(config, recipe, "cuda", whole=whole + 1)["peak_memory_gb"] > USABLE * budget
        counts.append(whole)
    assert counts == sorted(counts) and counts[0] < counts[-1]
    assert whole_layers(config, replace(recipe, gradient_checkpointing=False), 1000) == 0  # nothing recomputed anyway


def test_plan_says_how_many_layers_a_memory_budget_keeps_whole(tmp_path, capsys):
    from talkalike.train.plan import load_config, whole_layers
    from talkalike.train.recipe import PRESETS

    folder = tmp_path / "mistral"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(MISTRAL_7B_64K))
    result = plan_json(capsys, tmp_path, "--base", str(folder), "--no-timing", "--memory-budget", "24")
    within = result["memory_budget"]
    expected = whole_layers(load_config(str(folder), tmp_path), PRESETS["original"], 24.0)  # the GPU recipe's
    assert within["budget_gb"] == 24.0 and within["layers"] == 32 and within["whole_layers"] == expected > 0
    assert result["peak_memory_gb_on_cuda"] < within["peak_memory_gb"] <= 0.9 * 24.0
    assert main(["--home", str(tmp_path), "plan", "--base", str(folder), "--no-timing", "--memory-budget", "24"]) == 0
    assert f"the last {expected} of 32 layers run whole" in capsys.readouterr().out
    # "auto" is a share of a CUDA card, which this machine has not: one error line
    assert main(["--home", str(tmp_path), "plan", "--base", str(folder), "--no-timing", "--memory-budget", "auto"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: --memory-budget auto")


def test_on_a_gpu_the_estimate_counts_one_chunk_of_the_heads_logits(tmp_path):
    """The masked head runs in checkpointed chunks of rows on a GPU (train/qlora.py: head_loss_sum), so only one
    chunk's logits count there; on a CPU, and without the masked head, every labelled row's do."""
    from dataclasses import replace

    from talkalike.train.plan import estimate, load_config
    from talkalike.train.qlora import _chunk_rows
    from talkalike.train.recipe import PRESETS

    folder = tmp_path / "mistral"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(MISTRAL_7B_64K))
    config = load_config(str(folder), tmp_path)
    recipe = replace(PRESETS["original"], persona_only_loss=False)  # every row labelled
    tokens = recipe.batch_size * recipe.max_length
    chunked = estimate(config, recipe, "cuda")["memory_gb"]["activations_and_logits"]
    whole = estimate(config, replace(recipe, masked_head=False), "cuda")["memory_gb"]["activations_and_logits"]
    assert abs(whole - chunked - (tokens - _chunk_rows(64000)) * 64000 * 12 / 1e9) < 0.01
