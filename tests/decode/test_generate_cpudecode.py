"""The CPU chat's fast path (engines/gemma_cpu.py): its Gemma 3 forward computes what transformers computes, the
merged-adapter cache is built once, reused, rebuilt when the adapter changes, and the chat uses it without --compare."""

import json

import pytest
import torch
from conftest import build_windowed_gemma, make_run

from talkalike.decode.config import GenerationConfig
from talkalike.decode.engines import gemma_cpu as cpudecode
from talkalike.decode.stream import reply, stream_reply
from talkalike.decode.twin import Twin

GREEDY = GenerationConfig(temperature=0, repetition_penalty=1.0, max_new_tokens=12)


def test_the_decoder_gives_transformers_logits_in_prefill_and_step_by_step_past_the_sliding_window():
    model = build_windowed_gemma(300)
    decoder = cpudecode.from_model(model)
    ids = torch.randint(3, 300, (40,))
    with torch.inference_mode():
        expected = model(input_ids=ids[None]).logits[0]
        cache = decoder.new_cache(40)
        prefill = decoder.forward(ids[:5], 0, cache)
        torch.testing.assert_close(prefill[0], expected[4], atol=1e-4, rtol=1e-4)
        for position in range(5, 40):  # one token at a time, well past the 8-token window
            step = decoder.forward(ids[position: position + 1], position, cache)
            torch.testing.assert_close(step[0], expected[position], atol=1e-4, rtol=1e-4)
        whole = decoder.forward(ids, 0, decoder.new_cache(40))  # a prefill longer than the window
        torch.testing.assert_close(whole[0], expected[-1], atol=1e-4, rtol=1e-4)


def test_replies_through_the_decoder_equal_the_transformers_loop(tiny_tokenizer):
    model = build_windowed_gemma(len(tiny_tokenizer), seed=1)
    history = [{"role": "user", "content": "hey what's up? see you at the beach"}]
    sampled = GenerationConfig(temperature=0.8, repetition_penalty=1.1, max_new_tokens=12, seed=3)
    usual = Twin.of(model, tiny_tokenizer)
    fast = Twin.of_gemma(cpudecode.from_model(model), tiny_tokenizer)
    for config in (GREEDY, sampled):
        assert list(stream_reply(fast, history, config)) == list(stream_reply(usual, history, config))


def test_an_unsupported_architecture_is_recognised():
    assert cpudecode.supported({"model_type": "gemma3_text", "hidden_activation": "gelu_pytorch_tanh",
                                "layer_types": ["full_attention"],
                                "rope_parameters": {"full_attention": {"rope_type": "default"}}})
    assert not cpudecode.supported({"model_type": "llama", "layer_types": []})
    assert not cpudecode.supported({"model_type": "gemma3_text", "hidden_activation": "gelu_pytorch_tanh",
                                    "layer_types": ["full_attention"],
                                    "rope_parameters": {"full_attention": {"rope_type": "linear"}}})


@pytest.fixture
def tiny_run(tmp_path, tiny_tokenizer):
    """A run folder over a tiny Gemma 3 base folder, with a LoRA adapter whose weights are not zero."""
    base_dir = tmp_path / "base"
    build_windowed_gemma(len(tiny_tokenizer), seed=2).save_pretrained(base_dir)
    tiny_tokenizer.save_pretrained(base_dir)
    return make_run(tmp_path / "home" / "runs" / "tiny", base_dir, tiny_tokenizer, ["q_proj", "v_proj", "down_proj"],
                    persona="Noa")


def test_the_merged_cache_matches_the_adapter_and_is_built_once(tiny_run, monkeypatch):
    home = tiny_run.parents[1]
    fast = Twin.merged(tiny_run, home)
    usual = Twin.from_run(tiny_run, home, dtype=torch.float32)
    history = [{"role": "user", "content": "lol pita the cat broke my scooter"}]
    assert reply(fast, history, GREEDY) == reply(usual, history, GREEDY)
    ids = torch.tensor(usual.tokenizer.encode("hello there, how are you today?"))
    with torch.inference_mode():
        expected = usual.model(input_ids=ids[None]).logits[0, -1]
        with usual.model.disable_adapter():
            assert not torch.allclose(expected, usual.model(input_ids=ids[None]).logits[0, -1])  # a real adapter
        torch.testing.assert_close(fast.model.forward(ids, 0, fast.model.new_cache(len(ids)))[0], expected,
                                   atol=1e-4, rtol=1e-4)
    meta = json.loads((tiny_run / cpudecode.CACHE_DIR / "cache.json").read_text())
    assert meta["embedding_from_base"]  # the unchanged embedding is mapped from the base, not stored again
    assert (fast.persona, fast.name, fast.has_adapter) == ("Noa", "tiny", False)

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cache was rebuilt although nothing changed")

    monkeypatch.setattr(cpudecode, "build_merged", no_rebuild)
    assert reply(Twin.merged(tiny_run, home), history, GREEDY) == reply(fast, history, GREEDY)


def test_a_changed_adapter_rebuilds_the_merged_cache(tiny_run):
    from safetensors.torch import load_file, save_file

    home = tiny_run.parents[1]
    first = Twin.merged(tiny_run, home)
    before = json.loads((tiny_run / cpudecode.CACHE_DIR / "cache.json").read_text())["fingerprint"]
    path = tiny_run / "adapter" / "adapter_model.safetensors"
    save_file({name: tensor * 2 for name, tensor in load_file(path).items()}, path)
    second = Twin.merged(tiny_run, home)
    after = json.loads((tiny_run / cpudecode.CACHE_DIR / "cache.json").read_text())["fingerprint"]
    assert after != before
    ids = torch.tensor([2, 5, 9, 14])
    with torch.inference_mode():
        assert not torch.allclose(first.model.forward(ids, 0, first.model.new_cache(4)),
                                  second.model.forward(ids, 0, second.model.new_cache(4)))
    assert not [p for p in tiny_run.glob(f".{cpudecode.CACHE_DIR}*") if p.is_dir()]  # no temporary folders left


def test_chat_without_compare_takes_the_merged_path_and_with_compare_the_adapter(tiny_run, monkeypatch, capsys):
    import io
    import sys

    from talkalike.cli import main

    home = tiny_run.parents[1]
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr(sys, "stdin", io.StringIO("hey\n/quit\n"))
    assert main(["--home", str(home), "chat", "tiny", "--temperature", "0", "--max-new-tokens", "6"]) == 0
    fast_out = capsys.readouterr().out
    assert fast_out.startswith("Noa: ")
    assert (tiny_run / cpudecode.CACHE_DIR / "model.safetensors").is_file()
    monkeypatch.setattr(sys, "stdin", io.StringIO("hey\n/quit\n"))
    assert main(["--home", str(home), "chat", "tiny", "--compare", "--temperature", "0",
                 "--max-new-tokens", "6"]) == 0
    compare_out = capsys.readouterr().out
    assert "Noa (base): " in compare_out
    tuned_lines = [line for line in compare_out.splitlines() if not line.startswith("Noa (base)")]
    assert fast_out.splitlines() == tuned_lines[: len(fast_out.splitlines())]


def test_a_non_gemma_tokenizer_folder_loads_the_usual_way(tmp_path, tiny_tokenizer):
    tiny_tokenizer.save_pretrained(tmp_path)
    loaded = cpudecode.load_tokenizer(tmp_path)
    assert loaded.encode("see you at the beach 😂") == tiny_tokenizer.encode("see you at the beach 😂")


@pytest.mark.slow
def test_the_short_way_loads_gemmas_tokenizer_exactly_as_transformers_does():
    from transformers import AutoTokenizer

    from talkalike.home import models_dir, resolve_home
    from talkalike.model import ensure_embedded

    folder = ensure_embedded(models_dir(resolve_home(None)))
    fast, usual = cpudecode.load_tokenizer(folder), AutoTokenizer.from_pretrained(str(folder))
    for text in ["hey! beach tonight? 😂 שלום מה נשמע", "<start_of_turn>user\nhi<end_of_turn>\n",
                 "  two  spaces\n\nand lines", "ok\n<|msg|>\nsure", "<bos><eos><pad>x", "مرحبا 👋🏽"]:
        assert fast.encode(text) == usual.encode(text)
        assert fast.encode(text, add_special_tokens=False) == usual.encode(text, add_special_tokens=False)
        ids = usual.encode(text)
        assert fast.decode(ids) == usual.decode(ids)
        assert fast.decode(ids, skip_special_tokens=True) == usual.decode(ids, skip_special_tokens=True)
    for attribute in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "padding_side",
                      "chat_template", "all_special_ids", "model_max_length"):
        assert getattr(fast, attribute) == getattr(usual, attribute), attribute
    assert len(fast) == len(usual)
    assert fast.convert_tokens_to_ids(["<start_of_turn>", "<end_of_turn>"]) == \
        usual.convert_tokens_to_ids(["<start_of_turn>", "<end_of_turn>"])
