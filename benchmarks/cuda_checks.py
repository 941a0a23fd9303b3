"""Correctness checks that need a CUDA GPU (run by ``benchmarks/gpu_checks.sh``; never by the tests).

* The fused visual path equals the naive one on the GPU: values and every gradient in float32,
  and bf16 results within bf16 rounding of the float32 ones.
* ``OvisRunner`` picks CUDA + bf16 by itself and generates the same greedy text as on the CPU in
  float32 for a model trained by the quick-start (given with ``--model``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ovis.model.visual_path import fused_visual_embed, naive_visual_embed


def visual_path(dtype: torch.dtype) -> float:
    gen = torch.Generator().manual_seed(0)
    batch, patches, width, words, hidden = 4, 144, 256, 8190, 512
    cpu = [
        torch.randn(batch, patches, width, generator=gen),
        torch.randn(words, width, generator=gen) / width**0.5,
        1 + 0.2 * torch.randn(words, generator=gen),
        0.2 * torch.randn(words, generator=gen),
        torch.randn(words + 2, hidden, generator=gen) * 0.02,
    ]
    grad_out = torch.randn(batch, patches + 2, hidden, generator=gen).cuda()

    def run(fn, **kw):
        ts = [t.cuda().to(dtype).requires_grad_() for t in cpu]
        out = fn(*ts, **kw)
        out.backward(grad_out.to(dtype))
        return [out.detach().float()] + [t.grad.float() for t in ts]

    fused = run(fused_visual_embed, chunk_rows=128)  # 576 rows: five chunks, the last one kept
    naive = run(naive_visual_embed)
    worst = 0.0
    for name, a, b in zip(["out", "features", "head", "ln_w", "ln_b", "vte"], fused, naive, strict=True):
        err = ((a - b).norm() / b.norm().clamp_min(1e-30)).item()
        worst = max(worst, err)
        print(f"  {dtype!s:15s} {name:9s} relative error fused vs naive {err:.2e}")
    return worst


def runner(model: str, data: str) -> None:
    import json

    from ovis.serve.runner import OvisRunner, RunnerArguments

    items = json.loads((Path(data) / "eval.json").read_text())[:8]
    gpu = OvisRunner(RunnerArguments(model_path=model, max_new_tokens=8))
    cpu = OvisRunner(RunnerArguments(model_path=model, max_new_tokens=8, device="cpu", dtype="float32"))
    print(f"  runner picked {gpu.device} / {next(gpu.model.parameters()).dtype}")
    same = right = 0
    for item in items:
        image = str(Path(data) / "images" / item["image"])
        a, b = gpu.run(image, item["question"])["output"], cpu.run(image, item["question"])["output"]
        same += a == b
        right += a.strip().lower() == item["answer"]
        print(f"  {item['question']!r}: cuda bf16 {a!r} | cpu fp32 {b!r} | expected {item['answer']!r}")
    print(f"  {same}/{len(items)} answers identical on cuda bf16 and cpu fp32; {right}/{len(items)} right on cuda")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None, help="a trained model directory (quick-start stage3/final)")
    parser.add_argument("--data", default=None, help="its synthetic data directory (with eval.json, images/)")
    opts = parser.parse_args()
    print(f"# CUDA checks on {torch.cuda.get_device_name()}, torch {torch.__version__}")
    worst32 = visual_path(torch.float32)
    worst16 = visual_path(torch.bfloat16)
    print(f"fused vs naive: worst relative error float32 {worst32:.1e}, bfloat16 {worst16:.1e}")
    if opts.model:
        runner(opts.model, opts.data)


if __name__ == "__main__":
    main()
