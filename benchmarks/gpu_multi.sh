#!/usr/bin/env bash
# Data-parallel scaling of `talkalike train` on the GPUs of one machine, through the shipped Accelerate configs.
#
#   benchmarks/gpu_multi.sh DATASET_DIR [OUT] [all|ddp]
#
# Builds a 0.76B-parameter Mistral-shaped model with random weights and a small byte-level tokenizer (no download),
# then trains it with the original recipe (QLoRA) on 1 GPU and on every GPU with DDP, and with FSDP+QLoRA.
# Prints tokens/s per run; rank 0 counts its own tokens, so the total is that times the number of processes.
set -euo pipefail
data=$1
out=${2:-${OUT:-/tmp/gpu-multi}}
which=${3:-all}  # ddp: skip the FSDP run
mkdir -p "$out"
gpus=$(nvidia-smi -L | wc -l)
python3 - <<'PY'
import sys
sys.path.insert(0, "tests")
import torch
from conftest import build_tiny_tokenizer
from transformers import AutoModelForCausalLM, MistralConfig
tok = build_tiny_tokenizer()
config = MistralConfig(vocab_size=len(tok), hidden_size=2048, intermediate_size=5632, num_hidden_layers=16,
                       num_attention_heads=16, num_key_value_heads=8, sliding_window=None,
                       pad_token_id=0, eos_token_id=1, bos_token_id=2)
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
model.save_pretrained("/tmp/m1b")
tok.save_pretrained("/tmp/m1b")
print("model", sum(p.numel() for p in model.parameters()) / 1e9, "B params")
PY
run() {  # name, config, processes
  local name=$1 config=$2 n=$3 t0 t1
  t0=$(date +%s.%N)
  accelerate launch --config_file "$config" --num_processes "$n" -m talkalike --home "/tmp/home-$name" \
    train "$data" --base /tmp/m1b --preset original --name "$name" --max-steps 16 > "$out/$name.log" 2>&1 || {
      echo "$name FAILED"; tail -5 "$out/$name.log"; return 0; }
  t1=$(date +%s.%N)
  python3 - "$name" "$n" "$t0" "$t1" <<'PY'
import json, sys
name, n, t0, t1 = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
rows = [json.loads(l) for l in open(f"/tmp/home-{name}/runs/{name}/metrics.jsonl") if '"loss"' in l]
last = rows[-1]
print(f"{name:14} processes={n} rank0 tok/s={last['tokens_per_s']:.0f} total tok/s~{last['tokens_per_s'] * n:.0f} "
      f"peak GB={max(r['memory_gb'] for r in rows):.2f} last loss={last['loss']:.3f} wall={t1 - t0:.0f}s")
PY
}
run ddp-1gpu configs/accelerate/ddp.yaml 1 | tee -a "$out/table.txt"
run "ddp-${gpus}gpu" configs/accelerate/ddp.yaml "$gpus" | tee -a "$out/table.txt"
[ "$which" = ddp ] || run "fsdp-${gpus}gpu" configs/accelerate/fsdp_qlora.yaml "$gpus" | tee -a "$out/table.txt"
