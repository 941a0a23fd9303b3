"""Correctness checks that need a CUDA GPU (run by ``benchmarks/gpu_checks.sh``; never by the tests).

* The fused visual path equals the naive one on the GPU: values and every gradient in float32,
  and bf16 results within bf16 rounding of the float32 ones.
* ZeRO-3 with gradient checkpointing and bf16 over NCCL trains, resumes, exports and loads (``--zero3``).
* ``OvisRunner`` picks CUDA + bf16 by itself and generates the same greedy text as on the CPU in
  float32 for a model trained by the quick-start (given with ``--model``).
* ``--tiled``: a tiny tiled Ovis2-layout model (aimv2-tiny + qwen2.5-tiny, 3 x 3 tiles + a global
  view, ``hidden_stride`` 2) composed; its ``encode_images`` with the lean (fused) and the naive
  visual path, forward and gradients, in bf16 on the device against float32 on the CPU and
  against each other, within tolerance; both timed in turn.
* ``--vllm WORKDIR``: that model exported to the Ovis2 release layout
  (``python -m ovis convert DIR --to ovis2 --out DIR2``), served by ``vllm serve`` and asked one
  question through the ``openai`` client. Skipped, with the reason, when the converter has no
  ``--to ovis2`` or ``vllm`` is not importable (``gpu_checks.sh`` installs it only when asked).

``--device cpu`` runs the ``--tiled`` and ``--vllm`` checks on the CPU (what
``gpu_checks.sh --cpu-dry-run`` does): the same code with the device swapped; there the question
goes to ``ovis serve`` instead of vLLM when vLLM is absent, so the client code is exercised too.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import io
import os
import socket
import subprocess
import sys
import time
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
        config = load_train_config(
            stage3,
            [
                f"model={root / 'composed'}",
                f"output_dir={root / 'zero3'}",
                f"data.dataset_info={info}",
                f"max_steps={steps}",
                "deepspeed=zero3",
                "gradient_checkpointing=true",
                "save_steps=40",
                "precision=auto",
            ],
        )
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


# -- the tiled (Ovis2) layout -------------------------------------------------------------------------------
TILED = {"vit": "aimv2-tiny", "llm": "qwen2.5-tiny", "visual_vocab_size": 8192, "max_partition": 9, "hidden_stride": 2}


def compose_tiled(out: Path | None = None, llm: str | None = None):
    import ovis

    return ovis.compose(**{**TILED, "llm": llm or TILED["llm"]}, out=out, overwrite=True)


def tiled_visual_path(device: str, dtype: torch.dtype, repeats: int = 5) -> float:
    """Lean vs naive ``encode_images`` of a tiny tiled model on ``device`` in ``dtype``; worst error."""
    model, _ = compose_tiled()
    model.eval()
    side = model.backbone.spec.image_size
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randn(10, 3, side, side, generator=gen)  # one 3 x 3 image: global view + 9 tiles

    def run(path: str, where: str, kind: torch.dtype) -> list[torch.Tensor]:
        model.to(device=where, dtype=kind)
        model.config.visual_path = path
        params = [*model.visual_tokenizer.head.parameters(), model.vte.weight]
        for p in params:
            p.grad = None
        out = model.encode_images(pixels)
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
        out.backward(grad)
        return [out.detach().float().cpu()] + [p.grad.float().cpu() for p in params]

    reference = run("naive", "cpu", torch.float32)
    results = {path: run(path, device, dtype) for path in ("naive", "fused")}
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    names = ["embeddings", "head", "ln_w", "ln_b", "vte"]
    worst = 0.0
    for name, ref, naive, lean in zip(names, reference, results["naive"], results["fused"], strict=True):
        scale = ref.norm().clamp_min(1e-30)
        errs = [
            ((lean - naive).norm() / scale).item(),
            ((lean - ref).norm() / scale).item(),
            ((naive - ref).norm() / scale).item(),
        ]
        worst = max(worst, *errs)
        print(f"  {name:10s} lean vs naive {errs[0]:.1e}; vs CPU float32: lean {errs[1]:.1e}, naive {errs[2]:.1e}")
    verdict = "within" if worst <= tolerance else "OVER"
    print(f"  tiled lean vs naive on {device} {dtype}: worst relative error {worst:.1e} ({verdict} {tolerance:.0e})")

    model.to(device=device, dtype=dtype)
    timing: dict[str, list[float]] = {"naive": [], "fused": []}
    on_device = pixels.to(device=device, dtype=dtype)
    for index in range(repeats + 1):  # the first round warms up
        for path in ("naive", "fused") if index % 2 == 0 else ("fused", "naive"):
            model.config.visual_path = path
            for p in model.parameters():
                p.grad = None
            start = time.perf_counter()
            model.encode_images(on_device).float().square().mean().backward()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if index:
                timing[path].append(time.perf_counter() - start)
    naive, lean = (sorted(timing[p])[len(timing[p]) // 2] for p in ("naive", "fused"))
    print(
        f"  tiny tiled forward + backward (ViT included), median of {repeats}: naive {naive * 1e3:.2f} ms, "
        f"lean {lean * 1e3:.2f} ms (lean speed {naive / lean:.2f}x; tiny: overhead-bound)"
    )
    if worst > tolerance:
        raise SystemExit(f"tiled lean vs naive: relative error {worst:.1e} over {tolerance:.0e}")
    return worst


# -- vLLM serving the Ovis2 export -----------------------------------------------------------------------------
def convert_to_ovis2_available() -> str | None:
    """``None`` when ``python -m ovis convert --to ovis2`` exists, else why not."""
    proc = subprocess.run([sys.executable, "-m", "ovis", "convert", "--help"], capture_output=True, text=True)
    if proc.returncode != 0:
        return f"`python -m ovis convert --help` failed: {proc.stderr.strip()[-300:]}"
    text = proc.stdout.replace(" ", "")
    if "--to{" not in text or "ovis2" not in text.split("--to{", 1)[1].split("}", 1)[0].split(","):
        return "`python -m ovis convert` has no `--to ovis2` in this checkout"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def question_image_url() -> str:
    """A 600 x 400 PNG (a red square on white) as a data URL: a 2 x 3 or so grid of tiles."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (600, 400), "white")
    ImageDraw.Draw(image).rectangle((50, 50, 250, 250), fill="red")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def ask(port: int, model: str, log: Path, server: subprocess.Popen, ready_s: float) -> str:
    """Wait until the OpenAI-compatible server on ``port`` lists its models, then ask one question."""
    import openai

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", timeout=60, max_retries=0)
    deadline = time.monotonic() + ready_s
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited ({server.returncode}); its log:\n{log.read_text()[-3000:]}")
        try:
            client.models.list()
            break
        except openai.APIConnectionError:
            if time.monotonic() > deadline:
                tail = log.read_text()[-3000:]
                raise RuntimeError(f"the server was not up after {ready_s:.0f} s; its log:\n{tail}") from None
            time.sleep(2)
    reply = client.chat.completions.create(
        model=model,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": question_image_url()}},
                    {"type": "text", "text": "What colour is the square?"},
                ],
            }
        ],
        max_tokens=8,
        temperature=0,
    )
    text = reply.choices[0].message.content
    print(f"  asked through the openai client: {reply.usage.prompt_tokens} prompt tokens -> {text!r} (random weights)")
    return text


def serve_and_ask(cmd: list[str], port: int, model: str, log: Path, ready_s: float) -> str:
    """Start ``cmd`` (a server we own), ask it one question, and stop it (by its process group)."""
    with log.open("w") as sink:
        server = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        return ask(port, model, log, server, ready_s)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, 15)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, 9)


def vllm_check(workdir: Path, device: str, ready_s: float, llm: str | None = None) -> str:
    """Compose the tiny tiled model, export it to the Ovis2 layout, serve it with vLLM, ask it."""
    workdir.mkdir(parents=True, exist_ok=True)
    composed, exported = workdir / "tiny-tiled", workdir / "tiny-tiled-ovis2"
    compose_tiled(composed, llm)
    print(f"  composed {composed} ({TILED['vit']} + {llm or TILED['llm']})")
    why = convert_to_ovis2_available()
    if why is None:
        cmd = [
            sys.executable,
            "-m",
            "ovis",
            "convert",
            str(composed),
            "--to",
            "ovis2",
            "--out",
            str(exported),
            "--overwrite",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            reason = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"vllm: FAILED: `ovis convert --to ovis2` exited {proc.returncode}: {reason}")
            raise SystemExit(1)
        print(f"  exported to the Ovis2 layout: {exported}")
    have_vllm = importlib.util.find_spec("vllm") is not None
    if why is None and have_vllm:
        port = free_port()
        cmd = [
            "vllm",
            "serve",
            str(exported),
            "--trust-remote-code",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--served-model-name",
            "tiny-ovis2",
            "--max-model-len",
            "4096",
            "--enforce-eager",
            "--gpu-memory-utilization",
            "0.3",
            "--limit-mm-per-prompt",
            '{"image": 1}',
        ]
        serve_and_ask(cmd, port, "tiny-ovis2", workdir / "vllm.log", ready_s)
        return "vllm: served the Ovis2 export and answered"
    reasons = [why] if why else []
    if not have_vllm:
        reasons.append("vllm is not importable (gpu_checks.sh installs it with OVIS_GPU_VLLM=install)")
    skipped = "vllm: SKIPPED: " + "; ".join(reasons)
    print(f"  {skipped}")
    if device == "cpu":  # the dry run: the same client code against ovis serve (on the export, when made)
        port = free_port()
        target = exported if why is None else composed
        cmd = [
            sys.executable,
            "-m",
            "ovis",
            "serve",
            "--model",
            str(target),
            "--port",
            str(port),
            "--no-ui",
            "--device",
            "cpu",
            "--dtype",
            "float32",
            "--model-name",
            "tiny-tiled",
        ]
        serve_and_ask(cmd, port, "tiny-tiled", workdir / "ovis-serve.log", ready_s)
        print(f"  dry run: the client code asked ovis serve (CPU) on {target} the same question")
    return skipped


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None, help="a trained model directory (quick-start stage3/final)")
    parser.add_argument("--data", default=None, help="its synthetic data directory (with eval.json, images/)")
    parser.add_argument("--zero3", default=None, metavar="DIR", help="also train with ZeRO-3 under DIR")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu: the --tiled/--vllm dry run")
    parser.add_argument("--tiled", action="store_true", help="only the tiled-layout checks (lean vs naive)")
    parser.add_argument("--vllm", default=None, metavar="WORKDIR", help="only: export, vllm serve, ask")
    parser.add_argument("--vllm-llm", default=None, help=f"the tiny LLM of the --vllm model (default {TILED['llm']})")
    parser.add_argument("--ready-timeout", type=float, default=240, help="seconds a server may take to start")
    opts = parser.parse_args()
    where = torch.cuda.get_device_name() if opts.device.startswith("cuda") else "the CPU (dry run)"
    print(f"# CUDA checks on {where}, torch {torch.__version__}")
    if opts.tiled or opts.vllm:
        if opts.tiled:
            for dtype in (torch.float32, torch.bfloat16):
                # On the CPU (the dry run) one timed round is enough: the figures there mean little.
                tiled_visual_path(opts.device, dtype, repeats=1 if opts.device == "cpu" else 5)
        if opts.vllm:
            print(vllm_check(Path(opts.vllm), opts.device, opts.ready_timeout, opts.vllm_llm))
        return
    worst32 = visual_path(torch.float32)
    worst16 = visual_path(torch.bfloat16)
    print(f"fused vs naive: worst relative error float32 {worst32:.1e}, bfloat16 {worst16:.1e}")
    if opts.model:
        runner(opts.model, opts.data)
    if opts.zero3:
        zero3_training(opts.zero3)


if __name__ == "__main__":
    main()
