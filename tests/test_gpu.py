"""QLoRA on a CUDA GPU: the original recipe in 4-bit NF4 through `talkalike train`, CUDA-graph decoding, and a
run's twin merged for the Triton step.

These run only on a machine with a CUDA GPU and bitsandbytes (`pytest -m gpu tests/test_gpu.py`); they are deselected
by default and never imitated on the CPU.
"""

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu

torch = pytest.importorskip("torch")


def make_dataset(folder, n: int = 24):
    folder.mkdir()
    rows = []
    for i in range(n):
        rows.append({"messages": [
            {"role": "user", "content": f"are you coming to the beach at {i % 12 + 1}?"},
            {"role": "assistant", "content": "yesss\n<|msg|>\nhaha 😂 see you there"},
            {"role": "user", "content": "Great, bring the frisbee."},
            {"role": "assistant", "content": "ok 🙈"},
        ]})
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:20]))
    (folder / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[20:]))
    (folder / "stats.json").write_text("{}")
    (folder / "dataset.json").write_text(json.dumps({"persona": "Noa", "layout": "chat"}))
    return folder


def test_preference_tuning_runs_on_a_gpu_in_bf16(tmp_path, tiny_model_dir, home):
    """The GPU default's DPO stage (train/preference.py) under bf16 autocast: it runs, trains, and is recorded."""
    from talkalike.cli import main

    assert torch.cuda.is_available()
    rows = [{"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
             "id": f"c{i}"}
            for i, (question, answer) in enumerate([("cat's name?", "pita"), ("where do you work?", "the studio"),
                                                    ("which beach?", "gordon"), ("coffee or tea?", "coffee")] * 6)]
    dataset = tmp_path / "ds"
    dataset.mkdir()
    (dataset / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:20]))
    (dataset / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[20:]))
    (dataset / "dataset.json").write_text(json.dumps({"persona": "Noa", "layout": "chat"}))
    assert main(["--home", str(home), "train", "--force", str(dataset), "--base", str(tiny_model_dir), "--name", "p",
                 "--preset", "default", "--epochs", "1", "--preference-pairs", "20"]) == 0
    info = json.loads((home / "runs" / "p" / "run.json").read_text())
    assert info["device"] == "cuda" and info["dtype"] == "bf16"
    report = info["preference"]
    assert report["pairs"] == 20 and report["held-out pairs"] == 4 and report["steps"] == 2  # 16 pairs, then 4
    assert report["first loss"] == pytest.approx(0.6931, abs=1e-3)  # the policy starts as its reference


def test_qlora_trains_the_adapter_in_4bit_and_leaves_the_quantized_base_alone(tmp_path, tiny_model_dir, home):
    from safetensors.torch import load_file

    from talkalike.cli import main
    from talkalike.model import load_run

    assert torch.cuda.is_available()
    dataset = make_dataset(tmp_path / "ds")
    assert main(["--home", str(home), "train", "--force", str(dataset), "--base", str(tiny_model_dir), "--name", "q",
                 "--preset", "original", "--max-steps", "4"]) == 0
    run = home / "runs" / "q"
    info = json.loads((run / "run.json").read_text())
    assert info["quantized"] is True and info["device"] == "cuda"
    adapter = load_file(run / "adapter" / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: non-zero means it trained
    assert any("lm_head" in k for k in adapter)  # the original recipe adapts lm_head too

    model, tokenizer, _ = load_run(run, home)
    import bitsandbytes as bnb

    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    from safetensors.torch import load_file as load_base_weights

    base = load_base_weights(tiny_model_dir / "model.safetensors")
    reloaded = {k.replace("base_model.model.", ""): v for k, v in model.state_dict().items()}
    # the frozen, non-quantized weights came back unchanged (up to the bf16 they are held in)
    name = "model.embed_tokens.weight"
    assert torch.equal(reloaded[name].cpu(), base[name].to(reloaded[name].dtype))


def greedy(engine, prompt: list[int], n: int, stops=frozenset()) -> list[int]:
    from talkalike.decode.stream import tokens

    return list(tokens(engine, prompt, n, lambda logits, seen: logits.argmax(dim=-1), set(stops)))


def test_graph_decoding_matches_eager_greedy_decoding(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from talkalike.decode.engines.cuda_graph import GraphEngine

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).cuda().eval()
    prompt = [2, 5, 17, 33, 9, 41]
    with torch.inference_mode():
        eager = model.generate(torch.tensor([prompt], device="cuda"), max_new_tokens=12, min_new_tokens=12,
                               do_sample=False, pad_token_id=0)[0, len(prompt):].tolist()
    engine = GraphEngine(model, max_len=64, tune_kernels=False)
    assert greedy(engine, prompt, 12) == eager
    assert greedy(engine, prompt, 12) == eager  # the cache is reset between replies
    assert greedy(engine, prompt, 12, stops={eager[3]}) == eager[: eager.index(eager[3])]


def test_triton_graph_decoding_with_biases_matches_eager_greedy_decoding(tiny_tokenizer):
    from transformers import AutoModelForCausalLM, Qwen2Config

    from talkalike.decode import engines
    from talkalike.decode.twin import Twin

    config = Qwen2Config(vocab_size=320, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, use_sliding_window=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).cuda().eval()
    prompt = [3, 14, 15, 92, 65, 35, 89, 79]
    with torch.inference_mode():
        eager = model.generate(torch.tensor([prompt], device="cuda"), max_new_tokens=24, min_new_tokens=24,
                               do_sample=False, pad_token_id=0)[0, len(prompt):].tolist()
    twin = Twin.of(model, tiny_tokenizer)
    assert engines.pick(twin, 64) == "triton"
    engine = engines.build("triton", twin, 64)
    assert engine.graph is not None
    assert greedy(engine, prompt, 24) == eager


def test_triton_bf16_decoding_of_a_7b_layer_agrees_with_the_compiled_step():
    """At Mistral-7B's layer shapes in bf16, the Triton step's logits stay within bf16 noise of torch's fused step."""
    from transformers import AutoModelForCausalLM, MistralConfig

    from talkalike.decode.engines.cuda_graph import FusedStep
    from talkalike.decode.engines.triton_step import TritonStep

    config = MistralConfig(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=2,
                           num_attention_heads=32, num_key_value_heads=8, sliding_window=None)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    sequence = torch.randint(0, 32000, (300,)).tolist()
    step = TritonStep(FusedStep(model, 512))
    reference = FusedStep(model, 512)
    with torch.inference_mode():
        step.prefill(sequence[:200])
        reference.prefill(torch.tensor([sequence[:200]], device="cuda"))
        worst, same = 0.0, 0
        for position in range(200, 300):
            token = torch.tensor([sequence[position]], device="cuda")
            ours = step.step(token)[0].float()
            theirs = reference.step(token.view(1, 1), torch.tensor([position], device="cuda"))[0].float()
            worst = max(worst, float((ours - theirs).abs().max() / theirs.abs().max()))
            same += int(ours.argmax()) == int(theirs.argmax())
    assert worst < 0.05
    assert same >= 75  # near-flat random logits: bf16 rounding decides some argmaxes


def make_llama_run(home, tiny_tokenizer, quantized: bool) -> Path:
    """A run folder over a small Llama-family base with a random (non-zero) LoRA on every projection."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    base_dir = home / "llama-base"
    config = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(base_dir)
    tiny_tokenizer.save_pretrained(base_dir)
    run = home / "runs" / ("q" if quantized else "plain")
    lora = LoraConfig(r=8, lora_alpha=16, init_lora_weights=False,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    get_peft_model(base, lora).save_pretrained(run / "adapter")
    tiny_tokenizer.save_pretrained(run / "tokenizer")
    (run / "run.json").write_text(json.dumps({"base": {"id": str(base_dir), "source": "local"}, "layout": "chat",
                                              "persona": "Noa", "quantized": quantized}))
    return run


@pytest.mark.parametrize("quantized", [False, True], ids=["bf16", "4bit"])
def test_a_runs_tuned_replies_decode_merged_through_the_triton_step_and_match_the_adapter(home, tiny_tokenizer,
                                                                                          quantized):
    """On a GPU the chat's twin merges the adapter (into the dequantized base of a 4-bit run) and decodes tuned
    replies with the Triton step: the merged logits agree with the adapter model's, the greedy tokens match, and
    the base switch still gives the base model's tokens."""
    from talkalike.decode import engines
    from talkalike.decode.twin import load_twin

    run = make_llama_run(home, tiny_tokenizer, quantized)
    twin = load_twin(str(run), None, home)
    assert twin.merged_model is not None and twin.device.type == "cuda"
    prompt = [2, 17, 33, 9, 41, 5, 88, 12]
    with torch.inference_mode():
        ids = torch.tensor([prompt], device="cuda")
        adapter_logits = twin.model(input_ids=ids).logits.float()
        merged_logits = twin.merged_model(input_ids=ids).logits.float()
        assert (merged_logits - adapter_logits).abs().max() < 0.05 * adapter_logits.abs().max()
        with twin.adapter(False):
            base_logits = twin.model(input_ids=ids).logits.float()
        assert (base_logits - adapter_logits).abs().max() > 0.05 * adapter_logits.abs().max()  # the LoRA matters
        expected = twin.merged_model.generate(ids, max_new_tokens=16, min_new_tokens=16, do_sample=False,
                                              pad_token_id=0)[0, len(prompt):].tolist()
        with twin.adapter(False):
            base_expected = twin.model.generate(ids, max_new_tokens=16, min_new_tokens=16, do_sample=False,
                                                pad_token_id=0)[0, len(prompt):].tolist()
    tuned_engine = twin.engine(64, use_adapter=True)
    assert type(tuned_engine).__name__ == "TritonStep"
    assert greedy(tuned_engine, prompt, 16) == expected
    with twin.adapter(False):
        assert greedy(twin.engine(64, use_adapter=False), prompt, 16) == base_expected
    assert engines.pick(twin, 64) != "triton"  # the adapter model itself never takes the plain-model engines


def test_serves_slots_compiled_into_cuda_graphs_give_the_eager_slots_logits(tiny_tokenizer):
    """slots.py's step for every row, compiled and replayed, against the same maths run eagerly: rows at different
    positions, one slot idle, two steps (the second replays the graph)."""
    from conftest import build_tiny_llama

    from talkalike.decode.slots import Slots

    model = build_tiny_llama("mistral").cuda()
    compiled, eager = Slots(model, rows=4, max_len=64), Slots(model, rows=4, max_len=64, compile=False)
    prompts = [[5, 9, 14, 2], [7, 7, 31], [40, 41, 42, 43, 44, 45]]
    with torch.inference_mode():
        rows = [slots.prefill(list(range(3)), prompts) for slots in (compiled, eager)]
        for _ in range(2):
            for slots, row in zip((compiled, eager), rows, strict=True):
                row.tokens = [[int(t)] for t in row.hidden.argmax(-1)]
                slots.step(row)
            torch.testing.assert_close(rows[0].hidden, rows[1].hidden, atol=2e-4, rtol=2e-4)


def test_serves_compiled_slots_with_triton_attention_give_the_eager_sdpa_slots_tokens(tiny_tokenizer):
    """slots.py's Triton attention (each slot's own positions) compiled and replayed as a CUDA graph, against eager
    SDPA over every position, masked: rows at different positions, two of them crossing a 64-position block, one
    slot idle; greedy tokens, each side fed its own."""
    from conftest import build_tiny_llama

    from talkalike.decode.slots import Slots

    model = build_tiny_llama("mistral", sliding_window=None).cuda()
    compiled = Slots(model, rows=4, max_len=256, attention="triton")
    eager = Slots(model, rows=4, max_len=256, compile=False, attention="sdpa")
    prompts = [[5, 9, 14, 2], list(range(3, 63)), [40 + i % 50 for i in range(125)]]
    tokens = [[], []]
    with torch.inference_mode():
        rows = [slots.prefill(list(range(3)), prompts) for slots in (compiled, eager)]
        for _ in range(8):  # the second and third rows write positions 60 to 67 and 125 to 132
            for slots, row, drawn in zip((compiled, eager), rows, tokens, strict=True):
                row.tokens = [[int(t)] for t in row.hidden.argmax(-1)]
                drawn.append([t[0] for t in row.tokens])
                slots.step(row)
            torch.testing.assert_close(rows[0].hidden, rows[1].hidden, atol=2e-4, rtol=2e-4)
    assert tokens[0] == tokens[1]


def test_serves_batch_on_a_gpu_gives_every_greedy_reply_its_alone_text(tiny_tokenizer):
    """decode/live.py on CUDA: the first reply starts alone on its engine (which reads each token one step late, so
    it hands over a token already drawn), the others join it in compiled slots; each reads as it does alone."""
    import dataclasses
    import itertools
    import threading
    import time

    from transformers import AutoConfig, AutoModelForCausalLM

    from talkalike.decode.live import Live
    from talkalike.decode.slots import Slots
    from talkalike.decode.stream import stream_reply
    from talkalike.decode.turns import collect_messages
    from talkalike.decode.twin import Twin

    config = AutoConfig.for_model("llama", vocab_size=len(tiny_tokenizer), hidden_size=128, intermediate_size=96,
                                  num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
                                  max_position_embeddings=4096)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).cuda().eval()
    twin = Twin.of(model, tiny_tokenizer, name="noa", persona="Noa")
    greedy = dataclasses.replace(twin.defaults, temperature=0.0, max_new_tokens=40, max_messages=0)
    words = ["hey", "what's up at the beach", "שלום מה קורה", "ok see you at eight"]
    alone = [collect_messages(stream_reply(twin, [{"role": "user", "content": w}], greedy)) for w in words]
    live = Live(twin, rows=4)
    results = [None] * len(words)

    def answer(i, first=None):
        events = stream_reply(twin, [{"role": "user", "content": words[i]}], greedy, draw=live.draw)
        head = [next(events)] if first else []
        if first:
            first.set()
            while live.running() < len(words):
                time.sleep(0.005)
        results[i] = collect_messages(itertools.chain(head, events))

    started = threading.Event()
    threads = [threading.Thread(target=answer, args=(0, started))]
    threads[0].start()
    started.wait(300)
    threads += [threading.Thread(target=answer, args=(i,)) for i in range(1, len(words))]
    for thread in threads[1:]:
        thread.start()
    for thread in threads:
        thread.join(600)
    assert isinstance(live.batches[True][0], Slots) and live.widest == len(words)
    assert results == alone


def _bf16_loss_and_grads(model, ids, positions, **extra):
    model.zero_grad()
    logits = model(input_ids=ids, position_ids=positions, use_cache=False, **extra).logits.float()
    loss = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])
    loss.backward()
    return loss.detach(), {name: p.grad.float().clone() for name, p in model.named_parameters() if p.grad is not None}


def _assert_close_grads(grads, reference, tolerance: float):
    assert grads.keys() == reference.keys() and grads
    for name, grad in grads.items():
        error = (grad - reference[name]).norm() / reference[name].norm().clamp(min=1e-12)
        assert error < tolerance, f"{name}: relative error {error:.4f}"


@pytest.mark.parametrize("kind", ["mistral", "windowed-gemma", "mistral-native-gqa"])
def test_packed_rows_attend_through_varlen_flash_with_the_masked_paths_loss_and_gradients(kind, monkeypatch):
    """On a GPU the packed row's samples go through one varlen flash call per layer (train/packed.py), with the loss
    and gradients of SDPA's dense block mask; samples longer than Gemma's 8-token window cross it. With native_gqa
    the grouped-query Mistral's keys and values reach the flash kernel with their own 2 heads for 8 query heads."""
    from talkalike.train import packed
    from tests.conftest import build_tiny_llama, build_windowed_gemma

    build = (lambda: build_tiny_llama("mistral")) if kind != "windowed-gemma" else (lambda: build_windowed_gemma(211))
    model = build().to("cuda", torch.bfloat16).train()
    model.set_attn_implementation("sdpa")
    lengths = [13, 5, 1, 40, 8]
    ids = torch.randint(3, 211, (1, sum(lengths)), generator=torch.Generator().manual_seed(0)).cuda()
    positions = torch.cat([torch.arange(n) for n in lengths])[None].cuda()
    reference_loss, reference = _bf16_loss_and_grads(model, ids, positions)
    calls = []
    varlen = packed._varlen
    monkeypatch.setattr(packed, "_varlen", lambda *a, **k: calls.append(varlen(*a, **k)) or calls[-1])
    heads = []
    if kind == "mistral-native-gqa":
        function, accepts = packed._varlen_function()
        monkeypatch.setattr(packed, "_varlen_function", lambda: (
            lambda q, k, *a, **o: heads.append(k.shape[1]) or function(q, k, *a, **o), accepts))
    packed.use_packed_attention(model, native_gqa=kind == "mistral-native-gqa")
    loss, grads = _bf16_loss_and_grads(model, ids, positions, **packed.sample_bounds(positions))
    if kind == "mistral-native-gqa":
        assert heads and heads[0] == 2  # its own heads at the first call (repeated only if this PyTorch refused)
    # A sliding window needs varlen_attn's window_size (PyTorch 2.11 on); without it those layers loop per sample.
    windowed_ok = kind != "windowed-gemma" or "window_size" in packed._varlen_function()[1]
    assert calls and all((out is not None) == windowed_ok for out in calls), "varlen wherever it can serve the call"
    torch.testing.assert_close(loss, reference_loss, rtol=1e-2, atol=1e-2)
    _assert_close_grads(grads, reference, 0.03)


@pytest.mark.parametrize("rope", [False, True], ids=["layers", "layers+rope"])
def test_liger_layer_kernels_keep_a_training_steps_loss_and_gradients(rope):
    """Liger's RMSNorm and SwiGLU (talkalike.train.trainer._liger_layers), and its RoPE inside `rope_swapped`, give the
    model's own loss and gradients in bf16 within rounding, and leave the architecture's module as it was for models
    built later (and after the swap)."""
    pytest.importorskip("liger_kernel")
    from transformers.models.mistral import modeling_mistral

    from talkalike.train.trainer import _liger_layers, rope_swapped
    from tests.conftest import build_tiny_llama

    module_before = dict(vars(modeling_mistral))
    ids = torch.randint(3, 211, (1, 48), generator=torch.Generator().manual_seed(1)).cuda()
    positions = torch.cat([torch.arange(20), torch.arange(28)])[None].cuda()  # two packed samples
    plain = build_tiny_llama("mistral").to("cuda", torch.bfloat16).train()
    reference_loss, reference = _bf16_loss_and_grads(plain, ids, positions)
    fused = build_tiny_llama("mistral").to("cuda", torch.bfloat16).train()
    swap = _liger_layers(fused, rope=rope)
    assert swap
    for module in (fused.model.norm, fused.model.layers[0].mlp, fused.model.layers[0].input_layernorm):
        assert "liger" in module.forward.__func__.__module__, module  # Liger's forward is bound to the module
    assert {k: v for k, v in vars(modeling_mistral).items() if module_before.get(k) is not v} == {}
    calls = []
    if rope:
        assert swap[0] is modeling_mistral and "liger" in swap[2].__module__
        liger_rope = swap[2]
        swap = (swap[0], swap[1], lambda *args, **kwargs: calls.append(1) or liger_rope(*args, **kwargs))
    with rope_swapped(swap if rope else None):
        loss, grads = _bf16_loss_and_grads(fused, ids, positions)
    assert len(calls) == (2 if rope else 0)  # each layer's attention went through Liger's RoPE
    assert {k: v for k, v in vars(modeling_mistral).items() if module_before.get(k) is not v} == {}
    torch.testing.assert_close(loss, reference_loss, rtol=1e-2, atol=1e-2)
    _assert_close_grads(grads, reference, 0.03)


@pytest.mark.parametrize("checkpointed", [False, True], ids=["plain", "checkpointed"])
def test_lora_dropout_kernels_compiled_in_bf16_take_the_branch_s_gradients(checkpointed):
    """The dropout kernels (train/lora_kernels.py) compiled for the GPU, in bf16 at a 7B layer's widths: the products
    of `keep_mask`'s mask, through lora_add's autograd, within bf16's rounding."""
    from talkalike.train import lora_kernels
    from tests.train.test_lora_kernels import check_branch

    check_branch(lora_kernels, "cuda", torch.bfloat16, checkpointed, shape=(2, 700, 4096, 1024, 32), tolerance=0.02)
    check_branch(lora_kernels, "cuda", torch.bfloat16, checkpointed, shape=(1, 513, 14336, 512, 32), tolerance=0.02)
    check_branch(lora_kernels, "cuda", torch.bfloat16, checkpointed, tolerance=0.02)


def _nf4_lora_model(dropout: float):
    """The tiny Mistral in NF4 with LoRA on every projection and offloaded checkpoints, as the GPU recipe trains."""
    import tempfile

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from talkalike.train.qlora import prepare_kbit, use_offloaded_checkpoints
    from tests.conftest import build_tiny_llama

    with tempfile.TemporaryDirectory() as folder:
        build_tiny_llama("mistral").save_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, device_map={"": 0},
                                                     quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True))
    model = get_peft_model(prepare_kbit(model), LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout,
                                                           target_modules="all-linear"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    assert use_offloaded_checkpoints(model) == 2
    return model.train()


def _nf4_loss_and_grads(model):
    """`_nf4_lora_model`'s loss on a fixed row under bf16 autocast, dropout's draws seeded, and its gradients."""
    ids = torch.randint(3, 211, (1, 96), generator=torch.Generator().manual_seed(0)).cuda()
    model.zero_grad()
    torch.manual_seed(7)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    loss.backward()
    return loss.detach(), {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("nested", [True, False], ids=["double-quant", "fp32-scales"])
def test_the_one_launch_nf4_dequantization_gives_bitsandbytes_bits(nested):
    """train/nf4.py's kernel against bitsandbytes' own de-quantization of the same NF4 weights, at a 7B layer's
    widths and a small odd one, in bf16 (the recipe's) and fp32: the same bits."""
    import bitsandbytes.functional as bnbf

    from talkalike.train import nf4

    for shape in [(14336, 4096), (1024, 4096), (96, 200)]:
        weight = torch.randn(shape, dtype=torch.bfloat16, device="cuda") * 0.02
        packed, state = bnbf.quantize_4bit(weight, quant_type="nf4", compress_statistics=nested)
        assert nf4.handles(state) and bool(state.nested) == nested
        for dtype in (torch.bfloat16, torch.float32):
            state.dtype = dtype
            expected = bnbf.dequantize_4bit(packed, state)
            assert torch.equal(nf4.dequantize(packed, state, dtype), expected), (shape, dtype)


def test_base_and_branch_with_one_launch_nf4_give_the_same_loss_and_gradients():
    """The fused base layers de-quantizing through train/nf4.py (speed-up nf4-kernel) train the NF4 model as
    through bitsandbytes: the same loss and LoRA gradients, dropout kernels on, checkpoints offloaded."""
    from talkalike.train import lean_lora

    model = _nf4_lora_model(0.1)
    assert lean_lora.use_lean_lora(model, fused_add=True, kernels=True, base=True) == 2 * 7

    def loss_and_grads():
        return _nf4_loss_and_grads(model)

    reference_loss, reference = loss_and_grads()
    launched = []
    from talkalike.train import nf4

    original = nf4.dequantize
    nf4.dequantize = lambda *args: launched.append(1) or original(*args)
    try:
        assert lean_lora.use_lean_lora(model, fused_add=True, kernels=True, base=True, nf4=True) == 2 * 7
        loss, grads = loss_and_grads()
    finally:
        nf4.dequantize = original
    assert len(launched) == 2 * 7 * 3  # forward, replay and backward of every projection
    torch.testing.assert_close(loss, reference_loss, rtol=0, atol=0)
    _assert_close_grads(grads, reference, 1e-6)


def test_the_backward_s_scaled_products_give_the_same_loss_and_gradients():
    """With scaled-products the fused base layers' backward scales inside x's side's r-wide product (cuBLAS's alpha)
    and writes B's gradient in fp32 from its product (train/lean_lora.py): the forward untouched, A's and x's
    gradients as before (alpha / r = 2 scales exactly), B's within bf16's rounding of the product."""
    from talkalike.train import lean_lora

    model = _nf4_lora_model(0.1)
    assert lean_lora.use_lean_lora(model, fused_add=True, kernels=True, base=True, nf4=True) == 2 * 7
    reference_loss, reference = _nf4_loss_and_grads(model)
    assert lean_lora.use_lean_lora(model, fused_add=True, kernels=True, base=True, nf4=True, scaled=True) == 2 * 7
    loss, grads = _nf4_loss_and_grads(model)
    torch.testing.assert_close(loss, reference_loss, rtol=0, atol=0)
    _assert_close_grads({n: g for n, g in grads.items() if "lora_B" not in n},
                        {n: g for n, g in reference.items() if "lora_B" not in n}, 1e-6)
    _assert_close_grads(grads, reference, 1e-2)


@pytest.mark.parametrize("base", [False, True], ids=["branch", "base-and-branch"])
def test_a_replayed_layer_skips_its_unread_down_product_with_the_same_loss_and_gradients(monkeypatch, base):
    """With offloaded checkpoints, a layer run again for its backward skips its MLP's last 4-bit product
    (train/lean_lora.py, skip_unread_outputs): the loss and every gradient stay as they were, dropout kernels on,
    with the branch alone or base and branch as one function."""
    from talkalike.train import lean_lora

    model = _nf4_lora_model(0.1)
    assert lean_lora.use_lean_lora(model, fused_add=True, kernels=True, base=base) == 2 * 7

    def loss_and_grads():
        return _nf4_loss_and_grads(model)

    reference_loss, reference = loss_and_grads()
    assert lean_lora.skip_unread_outputs(model) == 2
    skipped = []
    if base:
        fused = lean_lora._base_and_branch()

        class Counting:
            @staticmethod
            def apply(*args):
                skipped.extend([1] if args[9] else [])  # (x, layer, a, b, scaling, p, dtype, early, kernels, skip, ...)
                return fused.apply(*args)

        monkeypatch.setattr(lean_lora, "_base_and_branch", lambda: Counting)
    else:
        original = lean_lora._weight_only()
        monkeypatch.setattr(lean_lora, "_weight_only", lambda: skipped.append(1) or original)
    loss, grads = loss_and_grads()
    assert len(skipped) == 2  # each layer's down projection, in its replay only
    torch.testing.assert_close(loss, reference_loss, rtol=0, atol=0)  # the forward pass is untouched
    _assert_close_grads(grads, reference, 1e-3)


@pytest.mark.parametrize("mode", ["reload", "prefetch", "whole"], ids=["reload", "prefetch", "whole"])
def test_offloaded_checkpoints_on_a_gpu_give_plain_checkpointings_loss_and_gradients(mode, monkeypatch):
    """On a GPU the checkpointed layers' inputs go to pinned host memory on a side stream and come back for the
    backward pass (train/qlora.py), each fetched on another side stream while the layer after it runs its backward
    with prefetch (from autograd's own thread for the GPU); loss and gradients are plain checkpointing's, dropout's
    masks replayed. "whole": the last layer runs whole (selective recomputation), the first offloaded."""
    from talkalike.train import qlora
    from tests.train.test_offload import _lora_model, _loss_and_grads

    ids = torch.randint(3, 211, (2, 96), generator=torch.Generator().manual_seed(0)).cuda()
    model = _lora_model().cuda()
    reference_loss, reference = _loss_and_grads(model, ids)
    if mode == "whole":
        assert qlora.keep_whole(model, 1) == 1
    assert qlora.use_offloaded_checkpoints(model, prefetch=mode != "reload") == (1 if mode == "whole" else 2)
    fetched = []
    original = qlora._prefetch
    monkeypatch.setattr(qlora, "_prefetch", lambda saved: original(saved) or fetched.append(saved.back is not None))
    loss, grads = _loss_and_grads(model, ids)
    assert fetched == ([True] if mode == "prefetch" else [])  # the first layer's input, during the second's backward
    torch.testing.assert_close(loss, reference_loss)
    assert grads.keys() == reference.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference[name], msg=name)


@pytest.mark.parametrize("fused_add", [False, True], ids=["add", "fused-add"])
@pytest.mark.parametrize("four_bit", [False, True], ids=["bf16", "nf4"])
def test_the_lean_lora_branch_gives_peft_s_loss_and_gradients_on_a_gpu(four_bit, fused_add):
    """LoRA's branch without a kept copy of its input (train/lean_lora.py) under bf16 autocast, as the GPU recipe
    trains: the fused dropout kernel's mask drawn again in the backward, over an NF4 base too. With the add inside the
    branch's last product (one rounding instead of three), the same to bf16's rounding."""
    from peft import LoraConfig, get_peft_model
    from transformers import BitsAndBytesConfig

    from talkalike.train.lean_lora import use_lean_lora
    from tests.conftest import build_tiny_llama

    model = build_tiny_llama("mistral").train()
    if four_bit:
        import tempfile

        from transformers import AutoModelForCausalLM

        with tempfile.TemporaryDirectory() as folder:
            model.save_pretrained(folder)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, device_map={"": 0},
                                                         quantization_config=(
                BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
                                   bnb_4bit_use_double_quant=True))).train()
    else:
        model = model.to("cuda", torch.bfloat16)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.3, target_modules="all-linear"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    ids = torch.randint(3, 211, (2, 96), generator=torch.Generator().manual_seed(0)).cuda()

    def loss_and_grads():
        model.zero_grad()
        torch.manual_seed(7)
        torch.cuda.reset_peak_memory_stats()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    reference_loss, reference = loss_and_grads()
    assert use_lean_lora(model, fused_add=fused_add, base=fused_add) == 2 * 7  # (base: NF4's base and branch as one)
    loss, grads = loss_and_grads()
    assert grads.keys() == reference.keys() and grads
    if not fused_add:
        torch.testing.assert_close(loss, reference_loss, rtol=1e-4, atol=1e-5)
        for name, grad in grads.items():
            torch.testing.assert_close(grad, reference[name], rtol=1e-3, atol=1e-5, msg=name)
        return
    torch.testing.assert_close(loss, reference_loss, rtol=1e-3, atol=1e-3)
    for name, grad in grads.items():  # bf16's rounding of the sum, relative to the gradient's size (CPU: <= 2%)
        assert (grad - reference[name]).abs().max() <= 0.05 * reference[name].abs().max(), name


def test_the_chat_sampler_never_makes_the_host_wait_for_the_device(tiny_tokenizer):
    """The chat's draw queues behind the step on the GPU: the host must run ahead while the step computes. Every
    piece a chat reply's sampler has (repetition penalty, the no-repeat rule by words, language steering, habits and
    their calibrated scales, the emoji the persona never sends held back, a message opener's temperature, the
    two-stage draw) runs under CUDA's sync check, which raises at any operation that waits for the device."""
    from talkalike.decode.config import GenerationConfig
    from talkalike.decode.language import MessageStart, Steer, _habit_tensors
    from talkalike.decode.sampling import Sampler, WordClasses, _token_texts

    vocab = 32000
    device = torch.device("cuda")
    masks = torch.zeros(vocab, 2, device=device)
    masks[: vocab // 2, 0] = 1
    masks[vocab // 2:, 1] = 1
    steer = Steer(other="HEBREW", shares={"other": 0.3, "latin": 0.3, "any": 0.3}, masks=masks, start_tail=[5, 6])
    config = GenerationConfig(seed=0, emoji_scale=1.5, laughter_scale=0.7)
    habits = [ids if ids.numel() else torch.arange(first, first + 20, device=device)  # scaled classes either way
              for ids, first in zip(_habit_tensors(tiny_tokenizer, vocab, device), (100, 200), strict=True)]
    sampler = Sampler(config, vocab, rows=1, device=device, separator_ids=[5, 6], steer=steer, shares=[0.3],
                      habits=habits,
                      words=WordClasses(_token_texts(tiny_tokenizer), vocab, device), starts=MessageStart([5, 6]),
                      banned=torch.tensor([7, 8, 9], device=device))
    logits = torch.randn(1, vocab, device=device)
    reply = torch.tensor([40, 41, 42, 40, 41, 5, 6, 43, 43, 43], device=device)
    seen = torch.cat([torch.arange(20, device=device), reply])[None]
    sampler(logits, seen, [0.5], [reply])  # first call: buffers made, kernels loaded
    torch.cuda.synchronize()
    assert sampler.habit_bias is not None
    # serve's batch: rows with their own temperatures (one greedy), at a message start or not, drawn together
    rows = sampler.widened(3)
    generators = [torch.Generator(device=device).manual_seed(k) for k in range(3)]
    three = logits.expand(3, -1).contiguous()
    replies = [reply, reply[:7], reply[:4]]  # inside a message, just after the separator, inside again
    rows(three, seen.expand(3, -1), [0.5, 0.8, 0.0], replies, shares=[0.3, 0.3, 0.3], generators=generators)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for length in range(3, len(reply) + 1):
            sampler(logits, seen, [0.5], [reply[:length]])
        for _ in range(3):
            rows(three, seen.expand(3, -1), [0.5, 0.8, 0.0], replies, shares=[0.3, 0.3, 0.3], generators=generators)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    favoured = logits.clone()
    favoured[0, 7:10] = 100.0  # held back, however likely
    assert int(sampler(favoured, seen, [0.5], [reply])[0]) not in (7, 8, 9)
    drawn = rows(favoured.expand(3, -1).contiguous(), seen.expand(3, -1), [0.5, 0.8, 0.0], replies,
                 shares=[0.3, 0.3, 0.3], generators=generators)
    assert not {7, 8, 9} & set(drawn.tolist())


@pytest.mark.parametrize("vocab", [32000, 262144])
def test_the_fused_habit_kernel_gives_keep_mass_s_logits_on_a_gpu(vocab, monkeypatch):
    """keep_mass on CUDA is one Triton kernel (engines/triton_sampler.py): the torch ops' logits, within fp32 noise,
    for one row at a number and for rows at their own temperatures (a greedy one left as it is)."""
    from talkalike.decode import language

    torch.manual_seed(0)
    device = torch.device("cuda")
    logits = torch.randn(3, vocab, device=device) * 4
    emoji = torch.randperm(vocab - 100, device=device)[:1500] + 50
    laughs = torch.arange(10, 34, device=device)
    logits[1, emoji] += 9.0
    for temperatures in (0.5, torch.tensor([[0.5], [1.0], [1.7]], device=device)):
        fused, plain = logits.clone(), logits.clone()
        language.keep_mass(fused, [emoji, laughs], temperatures)
        monkeypatch.setattr(language, "FUSED_HABITS", False)
        language.keep_mass(plain, [emoji, laughs], temperatures)
        monkeypatch.setattr(language, "FUSED_HABITS", True)
        assert not torch.equal(plain, logits)
        torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("with_words", [True, False], ids=["words", "tokens"])
def test_the_fused_no_repeat_kernel_bans_what_the_rule_bans_on_a_gpu(tiny_tokenizer, with_words, monkeypatch):
    """The no-repeat rule on CUDA is one Triton kernel (engines/triton_sampler.py): it bans exactly what the rule's
    torch ops ban, for a batch of replies of any lengths and for one reply alone."""
    from talkalike.decode import sampling

    device = torch.device("cuda")
    vocab = 32000
    words = sampling.WordClasses(sampling._token_texts(tiny_tokenizer), vocab, device) if with_words else None
    generator = torch.Generator().manual_seed(3)
    replies = [torch.randint(0, len(tiny_tokenizer), (int(torch.randint(0, 40, (1,), generator=generator)),),
                             generator=generator) for _ in range(20)]
    replies += [torch.randint(40, 44, (30,), generator=generator) for _ in range(4)]  # few tokens: many repeats
    replies = [reply.to(device) for reply in replies]
    separator = torch.tensor([5, 6], device=device)
    for n in (2, 3):
        fused = torch.zeros(len(replies), vocab + 64, device=device)
        sampling.block_repeats_rows(fused, replies, n, separator, words)
        monkeypatch.setattr(sampling, "FUSED_REPEATS", False)
        plain = torch.zeros(len(replies), vocab + 64, device=device)
        sampling.block_repeats_rows(plain, replies, n, separator, words)
        alone = torch.zeros(1, vocab + 64, device=device)
        sampling.block_repeats_rows(alone, replies[-1:], n, separator, words)
        monkeypatch.setattr(sampling, "FUSED_REPEATS", True)
        assert torch.isinf(plain).any()
        assert torch.equal(fused, plain), n
        one = torch.zeros(1, vocab + 64, device=device)
        sampling.block_repeats_rows(one, replies[-1:], n, separator, words)
        assert torch.equal(one, alone), n


def test_the_fused_steer_kernel_rescales_as_the_steer_does_on_a_gpu(monkeypatch):
    """The language steer on CUDA is one Triton kernel (engines/triton_sampler.py): the torch ops' logits, for a
    device reply at a message start and not, at a number and at a device temperature (a message's opener)."""
    from talkalike.decode import language

    torch.manual_seed(0)
    device = torch.device("cuda")
    vocab = 32000
    masks = torch.zeros(vocab, 2, device=device)
    masks[:9000, 0] = 1
    masks[20000:26000, 1] = 1
    steer = language.Steer(other="HEBREW", shares={"latin": 0.3, "other": 0.8, "any": 0.5}, masks=masks,
                           start_tail=[10, 11])
    logits = torch.randn(1, vocab, device=device) * 3
    for reply in (torch.tensor([4, 10, 11], device=device), torch.tensor([4, 10, 12], device=device)):
        for scales in (None, [torch.tensor(0.9, device=device)]):
            fused, plain = logits.clone(), logits.clone()
            steer.apply(fused, [0.3], [0.7], [reply], scales)
            monkeypatch.setattr(language, "FUSED_STEER", False)
            steer.apply(plain, [0.3], [0.7], [reply], scales)
            monkeypatch.setattr(language, "FUSED_STEER", True)
            assert torch.equal(plain, logits) == (int(reply[-1]) == 12)
            torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)


def test_the_fused_penalty_and_weights_draw_the_tokens_the_torch_ops_draw_on_a_gpu(monkeypatch):
    """choose's penalty and first-stage weights on CUDA are Triton kernels (engines/triton_sampler.py): with the same
    generator the same tokens come out as from the torch ops, rows at their own temperatures, one of them greedy."""
    from talkalike.decode import sampling
    from talkalike.decode.config import GenerationConfig

    torch.manual_seed(0)
    device = torch.device("cuda")
    vocab = 32000
    width = -(-vocab // sampling.BLOCK) * sampling.BLOCK
    config = GenerationConfig(repetition_penalty=1.3, top_p=1.0)
    drawn = {}
    for fused in (True, False):
        monkeypatch.setattr(sampling, "FUSED_DRAW", fused)
        generator = torch.Generator(device=device).manual_seed(5)
        picks = []
        for k in range(20):
            made = torch.Generator(device=device).manual_seed(k)
            logits = torch.full((3, width), float("-inf"), device=device)
            logits[:, :vocab] = torch.randn(3, vocab, device=device, generator=made) * 2
            seen = torch.randint(0, vocab, (3, 600), device=device, generator=made)
            picks.append(sampling.choose(logits, seen, [0.7, 0.0, 1.3], config, generator, vocab))
        drawn[fused] = torch.stack(picks)
    assert torch.equal(drawn[True], drawn[False])


def test_a_bitsandbytes_8bit_state_saved_per_tensor_loads_into_the_flat_group():
    """A run checkpointed per tensor under the recipe's 8-bit AdamW resumes flat with the same states
    (train/flat_optim.py): the 8-bit states and their block-wise scales joined in order (LoRA's sizes: multiples of
    its 256-element blocks)."""
    import bitsandbytes as bnb

    from tests.train.test_flat_optim import check_per_tensor_state_loads

    check_per_tensor_state_loads(bnb.optim.PagedAdamW8bit, shapes=((32, 4096), (1024, 32), (32, 14336), (4096, 32)),
                                 lr=1e-3, weight_decay=0.001)


def test_bitsandbytes_8bit_adamw_over_one_flat_parameter_steps_lora_tensors_as_it_steps_each():
    """flatten_groups (train/flat_optim.py) under the recipe's paged 8-bit AdamW: LoRA-shaped tensors (sizes multiples
    of its 256-element blocks) end three steps exactly where the optimizer stepping each tensor leaves them."""
    import bitsandbytes as bnb

    from talkalike.train.flat_optim import flatten_groups

    shapes = [(32, 4096), (1024, 32), (32, 14336), (4096, 32)]

    def params():
        generator = torch.Generator().manual_seed(0)
        return [torch.nn.Parameter((torch.randn(shape, generator=generator) * 0.02).cuda()) for shape in shapes]

    plain, flat = params(), params()
    reference = bnb.optim.PagedAdamW8bit(plain, lr=1e-3, weight_decay=0.001)
    optimizer = bnb.optim.PagedAdamW8bit(flat, lr=1e-3, weight_decay=0.001)
    assert flatten_groups(optimizer) == 1
    for step in range(3):
        generator = torch.Generator().manual_seed(step + 1)
        grads = [torch.randn(shape, generator=generator).cuda() for shape in shapes]
        for group, opt in ((plain, reference), (flat, optimizer)):
            for param, grad in zip(group, grads, strict=True):
                param.grad = grad.clone()
            opt.step()
            opt.zero_grad()
    for mine, theirs in zip(flat, plain, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
    assert not torch.equal(plain[0], params()[0])  # they moved
