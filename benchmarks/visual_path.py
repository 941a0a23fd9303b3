"""The structural-embedding path at the paper's scale: naive vs fused (chunked, recomputing) vs top-k.

The path is head (``Linear(D, V - 2)``) -> LayerNorm -> softmax over the visual words -> VTE
(``[V, H]``), for 576 patches per image plus the two indicator rows. Paper scale by default:
V = 131072, ViT width D = 1024, LLM width H = 4096; random weights, nothing downloaded. The ViT
itself is not part of the benchmark: the features are random ``[B, 576, 1024]``.

For batch 1 and 4 it measures, in one run and each configuration in a fresh subprocess:

* ``naive`` (every ``[rows, V]`` intermediate materialised, as the model's original code) and
  ``fused`` (``ovis.model.visual_path.fused_visual_embed``, the default), forward (inference, no
  gradient) and forward + backward (training: gradients for the features, the head, the LayerNorm
  and the VTE): wall time (median of ``--repeats`` runs after ``--warmup``), peak memory and the
  achieved FLOP/s as a fraction of plain ``torch.matmul`` measured in the same process, in turn
  with the path, on the path's own GEMM shapes (``--ref-words`` visual words instead of V, to keep
  it short; each product in the faster of its two layouts: see ``MatmulReference``).
  Memory: on CPU the peak resident set above the state after building the weights (``VmHWM``,
  reset through ``/proc/self/clear_refs`` after the set-up) and the bytes autograd saves for the
  backward pass (``saved_tensors_hooks``, parameters excluded); on CUDA
  ``torch.cuda.max_memory_allocated`` above the set-up.
* top-k inference (``topk_visual_embed``, k in ``--topk``) against the dense fused forward: time,
  speed-up and relative embedding error ``||e_topk - e_dense|| / ||e_dense||`` on flat
  distributions (a random head's LayerNorm output, as at initialisation) and on peaked ones (the
  LayerNorm gain scaled by ``--peak-scale``, so the top word holds about half the mass, as after
  training).

FLOPs counted are the matmuls only: ``2 R D V' + 2 R V' H`` forward for ``R`` patch rows and
``V' = V - 2`` words, three times that for forward + backward. The fused backward also recomputes
the logits of every chunk it did not keep (up to another ``2 R D V'``), which is not counted: the
fraction is the useful rate.

    python benchmarks/visual_path.py                      # paper scale, float32 on the CPU
    python benchmarks/visual_path.py --small              # a quick run at reduced widths
    python benchmarks/visual_path.py --device cuda --dtype bfloat16
    python benchmarks/visual_path.py --render benchmarks/results/visual_path_h100_bf16.json   # a saved run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ovis.model.visual_path import (
    chunk_rows_for,
    fused_visual_embed,
    naive_visual_embed,
    topk_visual_embed,
)
from ovis.profiling import saved_activation_bytes

PAPER = {"words": 131072, "width": 1024, "hidden": 4096, "patches": 576}
SMALL = {"words": 8192, "width": 256, "hidden": 1024, "patches": 144}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
GIB = 2**30


# -- helpers shared by the workers ----------------------------------------------------------------------
def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def interleaved(fns: dict, device: str, warmup: int, repeats: int) -> dict[str, list[float]]:
    """Wall times of each function, run in turn ``repeats`` times after ``warmup`` rounds.

    Interleaving keeps slow drifts of the machine (other jobs) from favouring one of them.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak(device: str) -> int:
    """Start a peak-memory window; returns the baseline in bytes."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    try:  # resets VmHWM to the current RSS (Linux >= 4.0)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return proc_status_kib("VmRSS") * 1024


def peak_since(device: str, baseline: int) -> int:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() - baseline
    return proc_status_kib("VmHWM") * 1024 - baseline


def build(shape: dict, batch: int, device: str, dtype: torch.dtype, peak_scale: float = 1.0, seed: int = 0):
    """Features and the path's parameters at ``shape``: random, the head scaled like ``nn.Linear``'s init."""
    gen = torch.Generator(device=device).manual_seed(seed)
    words, width, hidden = shape["words"] - 2, shape["width"], shape["hidden"]

    def randn(*size, scale=1.0):
        t = torch.empty(*size, device=device, dtype=dtype)
        return t.normal_(0.0, scale, generator=gen)

    features = randn(batch, shape["patches"], width)
    head = randn(words, width, scale=width**-0.5)
    ln_weight = torch.full((words,), peak_scale, device=device, dtype=dtype)
    ln_bias = torch.zeros(words, device=device, dtype=dtype)
    vte = randn(shape["words"], hidden)
    return features, head, ln_weight, ln_bias, vte


def path_flops(shape: dict, batch: int) -> int:
    rows, words = batch * shape["patches"], shape["words"] - 2
    return 2 * rows * words * (shape["width"] + shape["hidden"])


# -- workers (one configuration per subprocess) --------------------------------------------------------
class MatmulReference:
    """Plain ``torch.matmul`` on the path's GEMM shapes: the machine's rate for this work.

    Forward: ``X W^T`` and ``P E``; backward adds ``P^T G``, ``G E^T``, ``dZ W`` and ``dZ^T X``; with
    ``words`` visual words instead of V (shorter) and the rows rounded up to a multiple of 64. Each
    product is run in the faster of its two layouts (``C = A B`` or ``C^T = B^T A^T``, picked on the
    first call), so the reference is the best plain matmul, not one slowed by a layout. Inputs and
    outputs are allocated (and touched) once: running it leaves the peak-memory window alone.
    """

    def __init__(self, shape: dict, batch: int, words: int, device: str, dtype: torch.dtype, backward: bool):
        rows = -(-batch * shape["patches"] // 64) * 64
        width, hidden = shape["width"], shape["hidden"]
        r = lambda *size: torch.randn(*size, device=device).to(dtype)  # noqa: E731
        x, w, p, e, g = r(rows, width), r(words, width), r(rows, words), r(words, hidden), r(rows, hidden)
        pairs = [(x, w.t()), (p, e)]
        if backward:
            pairs += [(p.t(), g), (g, e.t()), (p, w), (p.t(), x)]
        self.options = [
            [(a, b, a.new_zeros(a.shape[0], b.shape[1])), (b.t(), a.t(), a.new_zeros(b.shape[1], a.shape[0]))]
            for a, b in pairs
        ]
        self.chosen: list[tuple] | None = None
        self.device = device
        self.flops = 2 * rows * words * (width + hidden) * (3 if backward else 1)

    def __call__(self) -> None:
        if self.chosen is None:
            self.chosen = [min(layouts, key=self._time) for layouts in self.options]
        for a, b, out in self.chosen:
            torch.matmul(a, b, out=out)

    def _time(self, gemm: tuple) -> float:
        a, b, out = gemm
        torch.matmul(a, b, out=out)  # the first call of a shape may be slower
        sync(self.device)
        start = time.perf_counter()
        torch.matmul(a, b, out=out)
        sync(self.device)
        return time.perf_counter() - start




def worker_path(args: dict) -> dict:
    device, dtype, shape, batch = args["device"], DTYPES[args["dtype"]], args["shape"], args["batch"]
    tensors = list(build(shape, batch, device, dtype))
    chunk = args["chunk_rows"]
    if args["variant"] == "naive":
        fn = naive_visual_embed
    else:
        fn = lambda *t: fused_visual_embed(*t, chunk_rows=chunk)  # noqa: E731
    backward = args["mode"] == "backward"
    reference = MatmulReference(shape, batch, args["ref_words"], device, dtype, backward)
    result: dict = {"flops": path_flops(shape, batch) * (3 if backward else 1), "ref_flops": reference.flops}
    if backward:
        for t in tensors:
            t.requires_grad_()
        grad_out = torch.randn(batch, shape["patches"] + 2, shape["hidden"], device=device).to(dtype)
        result["saved_bytes"] = saved_activation_bytes(fn, tensors)
        result["param_grad_bytes"] = sum(t.numel() * t.element_size() for t in tensors[1:])

        def step():
            for t in tensors:
                t.grad = None
            fn(*tensors).backward(grad_out)

    else:

        @torch.no_grad()
        def step():
            fn(*tensors)

    baseline = reset_peak(device)
    times = interleaved({"path": step, "matmul": reference}, device, args["warmup"], args["repeats"])
    result["peak_bytes"] = peak_since(device, baseline)
    result["times"], result["ref_times"] = times["path"], times["matmul"]
    return result


def worker_topk(args: dict) -> dict:
    device, dtype = args["device"], DTYPES[args["dtype"]]
    out: dict = {}
    for name, scale in (("flat", 1.0), ("peaked", args["peak_scale"])):
        tensors = build(args["shape"], args["batch"], device, dtype, peak_scale=scale)
        out[name] = topk_against_dense(tensors, args)
        del tensors
    return out


@torch.no_grad()
def topk_against_dense(tensors, args: dict) -> dict:
    """Dense (fused) and top-k forward times, interleaved, and each k's relative embedding error."""
    chunk = args["chunk_rows"]
    fns = {"dense": lambda: fused_visual_embed(*tensors, chunk_rows=chunk)}
    for k in args["ks"]:
        fns[str(k)] = lambda k=k: topk_visual_embed(*tensors, k, chunk_rows=chunk)
    times = interleaved(fns, args["device"], args["warmup"], args["repeats"])
    dense = fns["dense"]().float()
    result: dict = {"mass": top_mass(tensors, args["ks"]), "dense_times": times["dense"]}
    for k in args["ks"]:
        error = ((fns[str(k)]().float() - dense).norm() / dense.norm()).item()
        result[str(k)] = {"times": times[str(k)], "error": error}
    return result


def top_mass(tensors, ks, rows: int = 64) -> dict:
    """Mean probability mass of the top-1 and top-k words over the first ``rows`` patches."""
    features, head, ln_weight, ln_bias, _ = tensors
    x = features.reshape(-1, features.shape[-1])[:rows]
    y = torch.nn.functional.layer_norm((x @ head.t()).float(), (head.shape[0],), ln_weight.float(), ln_bias.float())
    top = y.softmax(-1).topk(max(ks), dim=-1).values
    mass = {"1": top[:, 0].mean().item()}
    mass.update({str(k): top[:, :k].sum(-1).mean().item() for k in ks})
    return mass


WORKERS = {"path": worker_path, "topk": worker_topk}


def run_worker(args: dict) -> dict:
    torch.set_num_threads(args["threads"])
    torch.manual_seed(0)
    return WORKERS[args["kind"]](args)


# -- driver -----------------------------------------------------------------------------------------------
def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def estimate_bytes(shape: dict, batch: int, variant: str, mode: str, dtype: torch.dtype) -> int:
    """A generous estimate of the configuration's peak, weights included, to skip what cannot fit."""
    size = torch.tensor([], dtype=dtype).element_size()
    words, rows = shape["words"], batch * (shape["patches"] + 2)
    params = words * (shape["width"] + shape["hidden"]) * size
    grid = rows * words * 4
    if variant == "naive" and mode == "forward":
        extra = 3 * grid
    elif variant == "naive":  # + the table's gradient pieces autograd adds up
        extra = 6 * grid + 3 * words * shape["hidden"] * size
    else:
        extra = 6 * chunk_rows_for(words) * words * 4
    return params * (1 if mode == "forward" else 2) + extra


def spawn(args: dict, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args['kind']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    model = platform.processor() or "cpu"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores"


def fmt_bytes(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if abs(n) >= GIB / 10 else f"{n / 2**20:.1f} MiB"


PATH_HEADER = (
    "| batch | pass | path | time | peak memory | saved for backward | GFLOP/s | matmul GFLOP/s | fraction |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)


def fmt_seconds(t: float) -> str:
    return f"{t:.2f} s" if t >= 1 else f"{t * 1e3:.2f} ms"


def path_row(batch: int, label: str, variant: str, res: dict) -> str:
    seconds, ref_seconds = statistics.median(res["times"]), statistics.median(res["ref_times"])
    rate, ref_rate = res["flops"] / seconds, res["ref_flops"] / ref_seconds
    saved = fmt_bytes(res["saved_bytes"]) if "saved_bytes" in res else "-"
    return (
        f"| {batch} | {label} | {variant} | {fmt_seconds(seconds)} | {fmt_bytes(res['peak_bytes'])} | {saved} | "
        f"{rate / 1e9:.1f} | {ref_rate / 1e9:.1f} | {100 * rate / ref_rate:.1f}% |"
    )


def topk_table(batch: int, res: dict, ks) -> str:
    lines = [
        f"\nTop-k inference, batch {batch} (top-1 mass: flat {res['flat']['mass']['1']:.1e}, "
        f"peaked {res['peaked']['mass']['1']:.2f})\n",
        "| k | distribution | dense | top-k | speed-up | relative error | mass kept |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for k in ks:
        for name in ("peaked", "flat"):
            dense, cell = statistics.median(res[name]["dense_times"]), res[name][str(k)]
            t = statistics.median(cell["times"])
            lines.append(
                f"| {k} | {name} | {fmt_seconds(dense)} | {fmt_seconds(t)} | {dense / t:.2f}x | {cell['error']:.2e} | "
                f"{res[name]['mass'][str(k)]:.3f} |"
            )
    return "\n".join(lines)


def render(raw: dict) -> None:
    """Print the tables of a run saved with ``--json`` (e.g. one made on another machine)."""
    print(f"# Visual path benchmark (saved run): {raw['machine']}, {raw['options'].get('dtype')}\n")
    print(PATH_HEADER)
    for key, res in raw.items():
        if key.startswith(("naive_", "fused_")):
            variant, mode, b = key.split("_")
            print(path_row(int(b[1:]), "forward" if mode == "forward" else "forward + backward", variant, res))
    for key, res in raw.items():
        if key.startswith("topk_b"):
            ks = sorted(int(k) for k in res["flat"] if k.isdigit())
            print(topk_table(int(key[len("topk_b") :]), res, ks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="reduced widths (V=8192, D=256, H=1024, 144 patches)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--topk", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--topk-batches", type=int, nargs="+", default=None, help="default: --batches")
    parser.add_argument("--peak-scale", type=float, default=10.0, help="LayerNorm gain of the peaked distributions")
    parser.add_argument(
        "--chunk-rows", type=int, default=None, help="fused path rows per chunk (default: 512 MiB of [rows, V] floats)"
    )
    parser.add_argument("--ref-words", type=int, default=16384, help="visual words in the matmul reference")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip", nargs="*", default=[], choices=["forward", "backward", "topk"])
    parser.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    parser.add_argument("--render", type=Path, default=None, help="print the tables of a --json file and exit")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.render:
        render(json.loads(opts.render.read_text()))
        return
    if opts.worker:
        print(json.dumps(run_worker(json.loads(opts.worker))))
        return

    shape = SMALL if opts.small else PAPER
    dtype = DTYPES[opts.dtype]
    words = shape["words"] - 2
    # At the small widths one 512 MiB chunk would hold every row: use small chunks to exercise them.
    chunk = opts.chunk_rows or (128 if opts.small else chunk_rows_for(words))
    ref_words = min(opts.ref_words, words)
    common = {
        "ref_words": ref_words,
        "device": opts.device,
        "dtype": opts.dtype,
        "shape": shape,
        "threads": opts.threads,
        "warmup": opts.warmup,
        "repeats": opts.repeats,
        "chunk_rows": chunk,
    }
    timeout = 3600
    print(
        f"# Visual path benchmark: {machine(opts.device)}, torch {torch.__version__}, {opts.dtype}, "
        f"{opts.threads} threads" + (f", load average {os.getloadavg()[0]:.2f}" if opts.device == "cpu" else "")
    )
    print(
        f"V = {shape['words']}, D = {shape['width']}, H = {shape['hidden']}, {shape['patches']} patches + 2 "
        f"indicators per image; fused chunk = {chunk} rows; median of {opts.repeats} after {opts.warmup} warm-up\n"
    )
    raw: dict = {"shape": shape, "options": {k: str(v) for k, v in vars(opts).items()}, "machine": machine(opts.device)}

    modes = [m for m in ("forward", "backward") if m not in opts.skip]
    if modes:
        print(PATH_HEADER)
    grads = None
    for batch in opts.batches:
        for mode in modes:
            label = "forward" if mode == "forward" else "forward + backward"
            for variant in ("naive", "fused"):
                need = estimate_bytes(shape, batch, variant, mode, dtype)
                if opts.device == "cpu" and need > 0.9 * mem_available():
                    why = f"skipped: needs ~{fmt_bytes(need)}, {fmt_bytes(mem_available())} available"
                    print(f"| {batch} | {label} | {variant} | {why} | | | | | |", flush=True)
                    continue
                res = spawn({**common, "kind": "path", "batch": batch, "variant": variant, "mode": mode}, timeout)
                raw[f"{variant}_{mode}_b{batch}"] = res
                grads = res.get("param_grad_bytes", grads)
                print(path_row(batch, label, variant, res), flush=True)
    if grads:
        print(
            f"\nPeak memory is above the weights and inputs; in training it includes the parameter gradients "
            f"({fmt_bytes(grads)}). Matmul: the same GEMM shapes with {ref_words} words, timed in turn with the path."
        )

    for batch in [] if "topk" in opts.skip else opts.topk_batches or opts.batches:
        res = spawn({**common, "kind": "topk", "batch": batch, "ks": opts.topk, "peak_scale": opts.peak_scale}, timeout)
        raw[f"topk_b{batch}"] = res
        print(topk_table(batch, res, opts.topk), flush=True)
    if opts.json:
        opts.json.write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
