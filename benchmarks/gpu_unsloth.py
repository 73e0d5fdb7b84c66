"""Unsloth's QLoRA on the benchmark's model and rows: the row `benchmarks/gpu_train.py` cannot hold in its process.

Unsloth pins transformers <= 5.17 and trl <= 1.15 and patches both process-wide on import, so it runs in a process
of its own, with its own packages, on the same card in the same device call as `gpu_train.py`:

    PYTHONPATH=/tmp/site-unsloth python3 benchmarks/gpu_unsloth.py --out $OUT [--models mistral-7b] [--variants ...]

The model is gpu_train's (the same config, random bf16 weights), written to local disk once because Unsloth loads
and quantizes a model from a folder itself (NF4, double quant, bf16 compute: `load_in_4bit=True`). The rows are
gpu_train's rows for ours and trl-liger, and the trainer is TRL's SFTTrainer as Unsloth patches it, with the
trl-liger row's settings (packing with BFD into padding-free rows, the CUDA recipe's batch geometry, optimizer, learning
rate and row length; loss on every token) but Unsloth's kernels in place of Liger's and Unsloth's gradient
checkpointing. LoRA r=32, alpha=64 on the seven projections (as trl-liger: Unsloth, like TRL, trains lm_head only
as a full module, not with an adapter). Variants:
- unsloth: LoRA dropout 0.07, the recipe's (Unsloth then takes its slower LoRA path: its fused LoRA kernels need
  dropout 0).
- unsloth-nodropout: dropout 0, Unsloth's fastest path (not the same maths as the other rows).

Unsloth's loader and trainer need a CUDA card (its CPU switch, UNSLOTH_ALLOW_CPU=1, gets as far as importing).
"""

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# The device has no network: no hub lookups, no usage statistics (Unsloth's own switches)
for _name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "UNSLOTH_DISABLE_STATISTICS"):
    os.environ.setdefault(_name, "1")

import torch  # noqa: E402
import unsloth  # noqa: E402, F401  (must come before transformers, peft and trl: it patches them)
from unsloth import FastLanguageModel  # noqa: E402
from unsloth.models import _utils as unsloth_utils  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_train import (  # noqa: E402
    TARGETS,
    StepTimer,
    build_config,
    make_rows,
    peak_flops,
    trl_liger_config,
    word_tokenizer,
)

VARIANTS = {"unsloth": 0.07, "unsloth-nodropout": 0.0}  # name: LoRA dropout


def write_model(name: str, folder: Path) -> int:
    """gpu_train's model with random bf16 weights, saved with a tokenizer over its ids; returns its matmul weights."""
    from torch import nn
    from transformers import AutoModelForCausalLM

    config = build_config(name)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    matmul_params = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    model.save_pretrained(folder, max_shard_size="20GB")
    word_tokenizer(config.vocab_size).save_pretrained(folder)
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return matmul_params


def attention() -> str:
    """Which attention Unsloth found: xformers (varlen over packed rows), flash-attn, or PyTorch's SDPA."""
    if getattr(unsloth_utils, "xformers", None) is not None:
        return "xformers " + str(unsloth_utils.xformers_version)
    return "flash-attn" if getattr(unsloth_utils, "HAS_FLASH_ATTENTION", False) else "sdpa"


def run(folder: Path, rows: list[dict], dropout: float) -> StepTimer:
    from datasets import Dataset
    from trl import SFTTrainer

    # trl-liger's settings without Liger: Unsloth brings its own kernels
    config = trl_liger_config(tempfile.mkdtemp(prefix="bench-unsloth-"), liger=False)
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(folder), max_seq_length=config.max_length, dtype=torch.bfloat16,
        load_in_4bit=True, use_exact_model_name=True, fix_tokenizer=False,
        use_gradient_checkpointing="unsloth",
    )
    model = FastLanguageModel.get_peft_model(
        model, r=32, lora_alpha=64, lora_dropout=dropout, bias="none", random_state=0,
        target_modules=[t for t in TARGETS if t != "lm_head"], use_gradient_checkpointing="unsloth",
    )
    timer = StepTimer(lambda state: state.num_input_tokens_seen)
    trainer = SFTTrainer(model=model, processing_class=tokenizer, args=config,
                         train_dataset=Dataset.from_list([{"input_ids": r["input_ids"]} for r in rows]),
                         callbacks=[timer.callback])
    trainer.train()
    del trainer, model
    return timer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/gpu-bench"))
    parser.add_argument("--models", default="mistral-7b")
    parser.add_argument("--variants", default="unsloth,unsloth-nodropout", help=f"from {', '.join(VARIANTS)}")
    parser.add_argument("--steps", type=int, default=6, help="as gpu_train's --steps (its rows: 8 samples a step)")
    parser.add_argument("--ours-factor", type=int, default=6, help="as gpu_train's: the rows ours and trl-liger get")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for model_name in args.models.split(","):
        folder = Path(tempfile.mkdtemp(prefix=f"bench-{model_name}-"))
        t0 = time.perf_counter()
        matmul_params = write_model(model_name, folder)
        print(f"{model_name}: written to {folder} in {time.perf_counter() - t0:.0f} s", flush=True)
        vocab = build_config(model_name).vocab_size
        for variant in args.variants.split(","):
            torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            try:
                timer = run(folder, make_rows(vocab, 8 * args.steps * args.ours_factor), VARIANTS[variant])
                row = timer.result()
            except Exception as error:  # one variant failing must not lose the others' numbers
                import traceback

                traceback.print_exc()
                row = {"error": f"{type(error).__name__}: {error}"}
            row.update(model=model_name, variant=variant, wall_s=time.perf_counter() - t0,
                       matmul_params=matmul_params, unsloth=unsloth.__version__, card=torch.cuda.get_device_name(),
                       attention=attention())
            if "tokens_per_s" in row:
                row["mfu"] = row["tokens_per_s"] * 4 * matmul_params / peak_flops()
            results.append(row)
            print(json.dumps(row), flush=True)
            gc.collect()
            torch.cuda.empty_cache()
    (out / "gpu_unsloth.json").write_text(json.dumps(results, indent=1))
    print(f"\n{'model':14} {'variant':18} {'tok/s':>9} {'MFU':>6} {'peak GB':>8} {'first-step loss':>15} attention")
    for r in results:
        if "error" in r:
            print(f"{r['model']:14} {r['variant']:18} ERROR {r['error'][:90]}")
        else:
            print(f"{r['model']:14} {r['variant']:18} {r['tokens_per_s']:9.0f} {r['mfu']:6.1%} {r['peak_gb']:8.2f} "
                  f"{r['first_step_loss']:15.3f} {r['attention']}")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
