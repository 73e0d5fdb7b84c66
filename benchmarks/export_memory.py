"""Peak memory and time of `talkalike export` for a run on the embedded Gemma 3 270M, and the GGUF its two exports share.

    .venv/bin/python benchmarks/export_memory.py                  # export --format gguf, then --format ollama
    .venv/bin/python benchmarks/export_memory.py --gguf-type q8_0

The run is the embedded base with a LoRA of the `default` preset's shape (r=16 on q/k/v/o/gate/up/down) whose weights
are random and non-zero, so the merge really changes the model; no training is needed to measure the export. Each
export runs as `python -m talkalike export` in its own process, and its peak resident memory is that process's
ru_maxrss. The converted embedded model is reused from $TALKALIKE_MODELS (default: .cache/models, the test suite's).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_run(home: Path) -> Path:
    """runs/bench/: run.json naming the embedded base, a random non-zero LoRA adapter, the base's tokenizer."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    from talkalike.model import EMBEDDED, load_base, resolve_base

    folder = home / "runs" / "bench"
    torch.manual_seed(0)
    base = load_base(None, home, dtype=torch.float32)
    lora = LoraConfig(r=16, lora_alpha=32, init_lora_weights=False,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(base, lora)
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.data.mul_(0.05)  # random but small: the twin stays a language model
    model.save_pretrained(folder / "adapter")
    target, info = resolve_base(None, home)
    AutoTokenizer.from_pretrained(target).save_pretrained(folder / "tokenizer")
    (folder / "run.json").write_text(json.dumps({"name": "bench", "base": info, "layout": "chat", "quantized": False,
                                                 "finished": "2026-01-01T00:00:00+00:00"}))
    assert info["id"] == EMBEDDED
    return folder


# Runs the CLI and reports the process's own peak resident size on exit (ru_maxrss, KiB on Linux).
CHILD = ("import atexit, resource, runpy, sys\n"
         "atexit.register(lambda: print('peak_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr))\n"
         "sys.argv = ['talkalike', *sys.argv[1:]]\n"
         "runpy.run_module('talkalike', run_name='__main__')\n")


def export(home: Path, fmt: str, kind: str) -> dict:
    """One `talkalike export` in its own process: wall seconds and peak RSS (GB)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, "--home", str(home), "export", "bench", "--format", fmt,
                           "--gguf-type", kind], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - started
    sys.stderr.write(done.stderr)
    if done.returncode:
        raise SystemExit(f"export --format {fmt} failed")
    peak_kib = int(done.stderr.rsplit("peak_kib", 1)[1].split()[0])
    return {"format": fmt, "seconds": round(seconds, 1), "peak_rss_gb": round(peak_kib / 2**20, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf-type", default="f16")
    args = parser.parse_args()
    os.environ.setdefault("TALKALIKE_MODELS", str(ROOT / ".cache" / "models"))
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        run = make_run(home)
        rows = [export(home, "gguf", args.gguf_type), export(home, "ollama", args.gguf_type)]
        gguf, ollama = run / "export-gguf" / "model.gguf", run / "export-ollama" / "model.gguf"
        shared = os.stat(gguf).st_ino == os.stat(ollama).st_ino
        for row in rows:
            print(f"export --format {row['format']:<6} {row['seconds']:>6.1f} s  peak RSS {row['peak_rss_gb']} GB")
        print(f"model.gguf {gguf.stat().st_size / 1e6:.1f} MB, shared by both exports (one inode): {shared}")
        print(json.dumps({"rows": rows, "gguf_bytes": gguf.stat().st_size, "shared": shared}))


if __name__ == "__main__":
    main()
