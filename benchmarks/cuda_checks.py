"""Correctness checks that need a CUDA GPU (run by ``benchmarks/gpu_checks.sh``; never by the tests).

* The fused visual path equals the naive one on the GPU: values and every gradient in float32,
  and bf16 results within bf16 rounding of the float32 ones.
* ZeRO-3 with gradient checkpointing and bf16 over NCCL trains, resumes, exports and loads (``--zero3``).
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


def zero3_training(root: str) -> None:
    """ZeRO-3 + gradient checkpointing + bf16 over NCCL: train, resume, export, load, generate."""
    import json

    import ovis
    from ovis.data.synth import SynthSpec, write_synthetic_dataset
    from ovis.train import load_train_config, train

    root = Path(root)
    info = write_synthetic_dataset(root / "data", SynthSpec(train_images=800, eval_images=20), progress=False)
    ovis.compose(vit="clip-toy", llm="qwen-toy", visual_vocab_size=1024, out=root / "composed")
    stage3 = Path(__file__).resolve().parents[1] / "configs" / "quickstart" / "stage3.yaml"

    def run(steps: int, resume: bool) -> list[float]:
        config = load_train_config(stage3, [
            f"model={root / 'composed'}", f"output_dir={root / 'zero3'}", f"data.dataset_info={info}",
            f"max_steps={steps}", "deepspeed=zero3", "gradient_checkpointing=true", "save_steps=40",
            "precision=auto",
        ])
        train(config, resume=resume, progress=False)
        lines = (root / "zero3" / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line)["loss"] for line in lines]

    losses = run(80, resume=False)
    print(f"  zero3: {len(losses)} steps, loss {sum(losses[:10]) / 10:.3f} -> {sum(losses[-10:]) / 10:.3f}")
    (root / "zero3" / "final").rename(root / "zero3" / "final-80")
    losses = run(120, resume=True)
    print(f"  resumed to step 120: {len(losses)} metric lines, last loss {losses[-1]:.3f}")
    item = json.loads((root / "data" / "eval.json").read_text())[0]
    from ovis.serve.runner import OvisRunner, RunnerArguments

    runner = OvisRunner(RunnerArguments(model_path=str(root / "zero3" / "final"), max_new_tokens=6))
    out = runner.run(str(root / "data" / "images" / item["image"]), item["question"])
    print(f"  exported model loads; {item['question']!r} -> {out['output']!r} (expected {item['answer']!r})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None, help="a trained model directory (quick-start stage3/final)")
    parser.add_argument("--data", default=None, help="its synthetic data directory (with eval.json, images/)")
    parser.add_argument("--zero3", default=None, metavar="DIR", help="also train with ZeRO-3 under DIR")
    opts = parser.parse_args()
    print(f"# CUDA checks on {torch.cuda.get_device_name()}, torch {torch.__version__}")
    worst32 = visual_path(torch.float32)
    worst16 = visual_path(torch.bfloat16)
    print(f"fused vs naive: worst relative error float32 {worst32:.1e}, bfloat16 {worst16:.1e}")
    if opts.model:
        runner(opts.model, opts.data)
    if opts.zero3:
        zero3_training(opts.zero3)


if __name__ == "__main__":
    main()
