#!/usr/bin/env bash
# The wheels the GPU benchmarks carry to a device machine whose image has no package registry (git-ignored folders):
#
#   .whl/          transformers, peft, trl, datasets, liger-kernel, bitsandbytes and what they and talkalike need
#                  beyond the image: talkalike's GPU path, gpu_train.py, gpu_decode.py, the GPU tests
#   .whl-unsloth/  Unsloth, unsloth_zoo and what the image lacks of their requirements, for gpu_unsloth.py, which runs
#                  on the image's transformers 5.17 (Unsloth's ceiling) in a process of its own
#
# Only the CPU and CUDA 13.0 libraries of bitsandbytes are kept (its wheel holds one per CUDA version: 41 MiB), and
# Unsloth's wheel loses its web studio and CLI (82 MiB unpacked), so both folders (29 + 23 MiB) fit the 64 MiB a call
# carries.
#   benchmarks/device_wheels.sh            # then: run with carry [".whl", ".whl-unsloth"]
set -euo pipefail
cd "$(dirname "$0")/.."
fetch() {  # folder, requirements...: wheels for the device's Python 3.12 on x86-64 Linux, without dependencies
  local folder=$1
  shift
  mkdir -p "$folder"
  python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --dest "$folder" \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any "$@"
}
# transformers 5.25 needs huggingface_hub >= 2.4 (the image has 1.33), which imports httpx2; datasets needs dill and
# multiprocess; talkalike's privacy stage (imported by the chat's stream) needs phonenumbers and python-stdnum.
fetch .whl transformers==5.25.0 peft==0.21.2 trl==1.16.0 datasets==5.2.0 bitsandbytes==0.50.2 liger-kernel==0.8.5 \
  huggingface_hub==2.4.0 httpx2==2.17.0 httpcore2==2.17.0 truststore==0.10.5 hf_xet==1.8.0 dill==0.4.1 \
  multiprocess==0.70.19 phonenumbers python-stdnum
(cd .whl && zip -q -d bitsandbytes-*.whl $(unzip -Z1 bitsandbytes-*.whl | grep '\.so$' \
  | grep -v -e libbitsandbytes_cpu.so -e libbitsandbytes_cuda130.so) || true)
# Unsloth pins trl <= 1.15 and datasets < 5; the rest are its imports the image lacks (KINDS.md lists the image).
# Not xformers: PyPI's newest (0.0.35) is built for torch 2.10 + CUDA 12.8 and does not load beside the image's 2.11 +
# CUDA 13 (Unsloth then says so and uses PyTorch's attention, as it does without it; gpu_unsloth.py records which).
fetch .whl-unsloth unsloth==2026.10.9 unsloth_zoo==2026.10.9 trl==1.15.0 datasets==4.8.5 torchao==0.18.0 \
  cut_cross_entropy==25.1.1 tyro==1.0.17 docstring-parser typeguard shtab msgspec hf_transfer diffusers==0.42.1 \
  nest_asyncio structlog json5 pydantic pydantic-core annotated-types typing-inspection dill multiprocess
(cd .whl-unsloth && zip -q -d unsloth-*.whl 'studio/*' 'unsloth_cli/*' || true)
du -sh .whl .whl-unsloth
