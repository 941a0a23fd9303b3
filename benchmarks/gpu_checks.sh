#!/usr/bin/env bash
# The checks that need a CUDA GPU, as one short script (a lent GPU session has ~15 minutes):
#   1. the visual path at paper scale in bf16 (benchmarks/visual_path.py);
#   2. the quick-start trained on the GPU: DeepSpeed ZeRO-2 over NCCL, bf16, then evaluated;
#   3. fused == naive on CUDA, OvisRunner's CUDA + bf16 answers against CPU float32, and ZeRO-3 +
#      gradient checkpointing training over NCCL, resumed, exported and loaded;
#   4. generation speed on the GPU (benchmarks/generation_speed.py).
# Usage: benchmarks/gpu_checks.sh OUTDIR   (each step is time-boxed; results land in OUTDIR; about
# 7 minutes on an H100, so it fits one 10-minute device call; the quick-start is shortened there)
set -u
out=${1:?usage: gpu_checks.sh OUTDIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 GRADIO_ANALYTICS_ENABLED=False TOKENIZERS_PARALLELISM=false
py=${PYTHON:-python3}
step() { local name=$1 limit=$2; shift 2; echo "=== $name (limit ${limit}s)"; local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$out/$name.txt"; echo "=== $name: rc ${PIPESTATUS[0]}, $((SECONDS - t0)) s"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
$py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" | tee -a "$out/gpu.txt"
step visual_path 200 $py benchmarks/visual_path.py --device cuda --dtype bfloat16 --repeats 5 --json "$out/visual_path.json"
step quickstart 240 $py -m ovis quickstart --out /tmp/ovis-qs-gpu --easy-steps 300 --stage3-steps 1500 --no-progress
step cuda_checks 180 $py benchmarks/cuda_checks.py --model /tmp/ovis-qs-gpu/stage3/final --data /tmp/ovis-qs-gpu/data --zero3 /tmp/ovis-zero3
step generation_speed 120 $py benchmarks/generation_speed.py
