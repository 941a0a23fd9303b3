#!/usr/bin/env bash
# The checks that need a CUDA GPU, as one short script (a lent GPU session has ~15 minutes):
#   tiled        the Ovis2 tiled layout: a tiny tiled model's lean vs naive visual path on CUDA in
#                float32 and bf16 (equal within tolerance, timed), then the full-size tiled visual
#                path benchmark in bf16 (benchmarks/tiled_visual_path.py --full: aimv2-huge, 9 tiles
#                + a global view, hidden_stride 2, V 65536);
#   visual_path  the v1 visual path at paper scale in bf16 (benchmarks/visual_path.py);
#   quickstart   the quick-start trained on the GPU: DeepSpeed ZeRO-2 over NCCL, bf16, then evaluated;
#   cuda_checks  fused == naive on CUDA, OvisRunner's CUDA + bf16 answers against CPU float32, and
#                ZeRO-3 + gradient checkpointing training over NCCL, resumed, exported and loaded;
#   generation_speed  generation speed on the GPU (benchmarks/generation_speed.py);
#   throughput   training throughput of the seed's 8B pair (clip ViT-L/14-336 + llama3-8b, V 131072,
#                random weights) with the real Trainer: stage 3, bf16, DeepSpeed ZeRO-2, gradient
#                checkpointing (as the recipe and LLaVA-1.5), batch 8 of 64-512 text tokens + one image
#                each, unpacked, then packed (data.packing) in what is left of the budget; samples/s,
#                tokens/s and MFU (visual path included) against the LLaVA-1.5 anchor
#                (benchmarks/train_throughput.py). Sized for one H200 (141 GB) and ~3-4 minutes: full
#                depth does not fit, since AdamW under ZeRO-2 on one GPU holds ~16 bytes per parameter
#                (bf16 weights and gradients, fp32 master weights and two moments) and the pair has
#                9.0B parameters with its 131K visual vocabulary: 134 GiB of the ~139 GiB before
#                activations and DeepSpeed's buffers. ZeRO-3 partitions nothing on one GPU, and CPU
#                offload (DeepSpeedCPUAdam, compiled first, 9B parameters stepped on 16 cores) would
#                spend the time budget. So 16 of the 32 LLM layers (5.5B parameters, 82 GiB of weights
#                and optimizer state): every matmul at full width, and the script prints what
#                full depth gives at the measured MFU. If that run leaves no result (e.g. out of
#                memory), 8 layers are tried in what is left;
#   vllm         (only with OVIS_GPU_VLLM=1 or =install, or when named) the tiny tiled model exported
#                with `python -m ovis convert DIR --to ovis2`, served by `vllm serve` and asked one
#                question through the openai client; skipped with the reason when the converter
#                has no --to ovis2 or vllm is not importable. OVIS_GPU_VLLM=install first runs
#                `pip install ${OVIS_VLLM_PIP:-vllm}` (time-boxed; vLLM stays out of the default install);
#                OVIS_VLLM_LLM picks the tiny LLM (default qwen2.5-tiny, Ovis2's family).
#
# Usage: benchmarks/gpu_checks.sh [--cpu-dry-run] OUTDIR [STEP ...]
#   STEPs default to: tiled visual_path quickstart cuda_checks generation_speed throughput (+ vllm, see
#   above).
#   The whole run is held to OVIS_GPU_BUDGET_S seconds (default 470: under 8 minutes): each step's
#   limit is cut to what is left, and a step is skipped when under 30 s are left. A summary of every
#   step (ok / rc / timed out / skipped, seconds) ends the output and OUTDIR/summary.txt.
#   --cpu-dry-run runs the Python parts of the tiled, vllm and throughput steps on the CPU at tiny sizes
#   (no nvidia-smi; the vllm step asks `ovis serve` when vLLM is absent), to check the script
#   where no GPU is. No test needs this script.
set -u
dry=0
if [ "${1:-}" = "--cpu-dry-run" ]; then dry=1; shift; fi
out=${1:?usage: gpu_checks.sh [--cpu-dry-run] OUTDIR [STEP ...]}
shift
mkdir -p "$out"
export PYTHONUNBUFFERED=1 GRADIO_ANALYTICS_ENABLED=False TOKENIZERS_PARALLELISM=false
py=${PYTHON:-python3}
budget=${OVIS_GPU_BUDGET_S:-470}
vllm_mode=${OVIS_GPU_VLLM:-0}
start=$SECONDS
summary=()

if [ $# -gt 0 ]; then steps=("$@")
elif [ $dry = 1 ]; then steps=(tiled vllm throughput)
else
  steps=(tiled visual_path quickstart cuda_checks generation_speed throughput)
  if [ "$vllm_mode" != 0 ]; then steps+=(vllm); fi
fi

# step NAME LIMIT CMD...: run CMD under min(LIMIT, what the budget leaves), tee'd to OUTDIR/NAME.txt.
step() {
  local name=$1 limit=$2; shift 2
  local left=$((budget - (SECONDS - start) - 10))
  if [ $left -lt 30 ]; then
    echo "=== $name: SKIPPED (budget of ${budget}s spent)"; summary+=("$name: skipped (budget spent)"); return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "=== $name (limit ${limit}s)"
  local t0=$SECONDS
  timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$out/$name.txt"
  local rc=${PIPESTATUS[0]} verdict=ok
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then verdict="TIMED OUT"; elif [ "$rc" != 0 ]; then verdict="FAILED (rc $rc)"; fi
  echo "=== $name: rc $rc, $((SECONDS - t0)) s"
  summary+=("$name: $verdict, $((SECONDS - t0)) s")
}

if [ $dry = 1 ]; then
  dev=cpu
  echo "CPU dry run: $($py -c 'import torch; print("torch", torch.__version__)')" | tee "$out/gpu.txt"
else
  dev=cuda
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
  $py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" | tee -a "$out/gpu.txt"
fi

for s in "${steps[@]}"; do
  case $s in
    tiled)
      step tiled_check $([ $dry = 1 ] && echo 240 || echo 90) $py benchmarks/cuda_checks.py --device $dev --tiled
      if [ $dry = 1 ]; then
        step tiled_benchmark 90 $py benchmarks/tiled_visual_path.py --device cpu --repeats 1 --warmup 0 --images 1 \
          --json "$out/tiled_visual_path.json"
      else
        step tiled_benchmark 120 $py benchmarks/tiled_visual_path.py --full --device cuda --dtype bfloat16 \
          --warmup 1 --repeats 5 --vit-views 10 --json "$out/tiled_visual_path.json"
      fi ;;
    visual_path)
      step visual_path 200 $py benchmarks/visual_path.py --device cuda --dtype bfloat16 --repeats 5 --json "$out/visual_path.json" ;;
    quickstart)
      step quickstart 240 $py -m ovis quickstart --out /tmp/ovis-qs-gpu --easy-steps 300 --stage3-steps 1500 --no-progress ;;
    cuda_checks)
      step cuda_checks 180 $py benchmarks/cuda_checks.py --model /tmp/ovis-qs-gpu/stage3/final --data /tmp/ovis-qs-gpu/data --zero3 /tmp/ovis-zero3 ;;
    generation_speed)
      step generation_speed 120 $py benchmarks/generation_speed.py ;;
    throughput)
      if [ $dry = 1 ]; then
        step throughput 240 $py benchmarks/train_throughput.py --toy --zero 2 --precision fp32 --packing on \
          --batch 8 --text-tokens 8-200 --steps 2 --warmup 1 --json "$out/train_throughput.json"
      else
        # RAM-backed scratch when there is room: the composed model is written once and read once.
        tw=/tmp/ovis-throughput
        shm=$(df -Pk /dev/shm 2>/dev/null | awk 'NR==2 {print $4}')
        [ "${shm:-0}" -gt $((40 * 1024 * 1024)) ] && tw=/dev/shm/ovis-throughput
        tp=(benchmarks/train_throughput.py --vit clip --llm llama3-8b --visual-vocab 131072 --stage 3 --zero 2
            --precision bf16 --checkpointing on --batch 8 --text-tokens 64-512 --steps 6 --warmup 2 --work "$tw")
        layers=16
        step throughput 300 $py "${tp[@]}" --llm-layers $layers --packing off --json "$out/train_throughput.json"
        if [ ! -s "$out/train_throughput.json" ]; then
          layers=8
          step throughput_8_layers 180 $py "${tp[@]}" --llm-layers $layers --packing off \
            --json "$out/train_throughput.json"
        fi
        # The composed model is reused: loading it and DeepSpeed's set-up are most of this one's time.
        step throughput_packing 150 $py "${tp[@]}" --llm-layers $layers --packing on \
          --json "$out/train_throughput_packing.json"
        rm -rf "$tw"
      fi ;;
    vllm)
      if [ "$vllm_mode" = install ] && ! $py -c "import vllm" 2>/dev/null; then
        # shellcheck disable=SC2086  # OVIS_VLLM_PIP may hold several pip arguments (e.g. --find-links DIR vllm)
        step vllm_install 300 $py -m pip install ${OVIS_VLLM_PIP:-vllm}
      fi
      step vllm 240 $py benchmarks/cuda_checks.py --device $dev --vllm "$out/vllm" --ready-timeout 180 \
        --vllm-llm "${OVIS_VLLM_LLM:-qwen2.5-tiny}" ;;
    *) echo "=== $s: unknown step (tiled visual_path quickstart cuda_checks generation_speed throughput vllm)"
       summary+=("$s: unknown step") ;;
  esac
done

{
  echo "=== summary ($((SECONDS - start)) s of a ${budget}s budget$([ $dry = 1 ] && echo ', CPU dry run'))"
  for line in "${summary[@]}"; do echo "  $line"; done
  grep -hE "^vllm: (SKIPPED|FAILED):" "$out"/vllm.txt 2>/dev/null | sed 's/^/  /'
  grep -hE "^  measured .* MFU|^ +[0-9]+ text tokens/sample \(assumed\)" "$out"/throughput*.txt 2>/dev/null | sed 's/^ */  throughput: /'
} | tee "$out/summary.txt"
