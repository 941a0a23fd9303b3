"""The tiled (Ovis2) visual path: tokens per image and images/s, naive vs lean, side by side.

An image in the Ovis2 layout is a grid of tiles plus a global view (3 x 3 + 1 = 10 views at the
default ``max_partition`` 9); each view goes through the ViT, its patch features are merged
``hidden_stride x hidden_stride`` (``ovis.model.visual_tokenizer.merge_patches``), and the merged
tokens go through head -> LayerNorm -> softmax over the visual words -> the visual embedding
table (VTE). Two ways of computing that last part are compared, in one process, in turn:

* ``naive``: ``OvisConfig.visual_path = "naive"``: the head's logits, the LayerNorm output and the
  probabilities over the whole vocabulary are materialised, then ``probabilities @ table``;
* ``lean``: the default (``"fused"``): ``ovis.model.visual_path.fused_visual_embed`` on the merged
  features, chunked, recomputing in the backward pass.

Both are fed the same merged features, so the head takes ``s^2 x`` the ViT's width: the lean path
is measured covering the merged head. The ViT (and the merge) is the same code for both paths; it
is timed once per pass on ``--vit-views`` views and scaled to the image's views, so images/s of
the whole visual path is ``1 / (ViT time per image + head-path time per image)``.
"forward" is inference (no gradient); "forward + backward" is a training step of the visual
path: gradients for the features (and through them, for the ViT's parameters), the head, the
LayerNorm and the VTE. Peak memory: the resident set's peak above the state before the call on
the CPU (``VmHWM``, reset before each), ``torch.cuda.max_memory_allocated`` above it on CUDA.
Random weights; nothing is downloaded.

    python benchmarks/tiled_visual_path.py            # aimv2-tiny + qwen2.5-tiny, composed (seconds)
    python benchmarks/tiled_visual_path.py --full     # aimv2-huge-patch14-448, V 65536, H 3584 (minutes)
    python benchmarks/tiled_visual_path.py --full --device cuda --dtype bfloat16

The default composes a real tiny tiled model (``ovis.compose``) and first checks that the two
functions measured here are what ``OvisForCausalLM.encode_images`` computes for
``visual_path="naive"`` and ``"fused"``. ``--full`` builds the same parts at the Ovis2-8B sizes
(aimv2-huge-patch14-448, ``hidden_stride`` 2, visual vocabulary 65536 with 5 indicator rows, the
LLM width of qwen2.5-7b) without an LLM.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from visual_path import DTYPES, fmt_bytes, fmt_seconds, machine, peak_since, reset_peak, sync

from ovis.model.visual_embedding import VisualEmbedding
from ovis.model.visual_path import fused_visual_embed
from ovis.model.visual_tokenizer import VisualTokenizer
from ovis.tiling import block_length, num_views

#: the tiled layout's indicator rows (begin, grid, column, row, end) at the VTE's end
INDICATORS = 5
TINY = {"vit": "aimv2-tiny", "llm": "qwen2.5-tiny", "words": 8192, "images": 2, "vit_views": None}
# Ovis2-8B's visual tokenizer: aimv2-huge-patch14-448, hidden_stride 2, a 65536-word vocabulary.
FULL = {"vit": "aimv2-huge-patch14-448", "llm": "qwen2.5-7b", "words": 65536, "images": 1, "vit_views": 1}


# -- the two paths, exactly as OvisForCausalLM.encode_images runs them in the tiled layout ----------------
def naive_path(tokenizer: VisualTokenizer, vte: VisualEmbedding, features: torch.Tensor) -> torch.Tensor:
    """``visual_path="naive"``: softmax over the whole vocabulary, then probabilities @ table."""
    probs = tokenizer.head(features).softmax(dim=-1)
    return vte.embed_distributions(probs, use_indicators=False)


def lean_path(tokenizer: VisualTokenizer, vte: VisualEmbedding, features: torch.Tensor) -> torch.Tensor:
    """``visual_path="fused"`` (the default): the lean path on the merged features."""
    linear, norm = tokenizer.head
    return fused_visual_embed(
        features,
        linear.weight,
        norm.weight,
        norm.bias,
        vte.weight,
        eps=norm.eps,
        use_indicators=False,
        indicator_rows=INDICATORS,
    )


PATHS = {"naive": naive_path, "lean": lean_path}


# -- building --------------------------------------------------------------------------------------------
def build_tiny(words: int, device: str, dtype: torch.dtype):
    """A composed tiny tiled model; checks that the measured functions are the model's own."""
    import ovis

    model, _ = ovis.compose(vit=TINY["vit"], llm=TINY["llm"], visual_vocab_size=words, max_partition=9, hidden_stride=2)
    model = model.to(device=device, dtype=dtype).eval()
    tokenizer, vte = model.visual_tokenizer, model.vte
    side = tokenizer.backbone.spec.image_size
    pixels = torch.randn(3, 3, side, side, device=device, dtype=dtype)
    worst = 0.0
    with torch.no_grad():
        for name, fn in PATHS.items():
            model.config.visual_path = "naive" if name == "naive" else "fused"
            ours = fn(tokenizer, vte, tokenizer.features(pixels))
            theirs = model.encode_images(pixels)
            if ours.shape != theirs.shape or not torch.equal(ours, theirs):
                raise SystemExit(f"the benchmark's {name} path is not what encode_images computes")
        model.config.visual_path = "fused"
        a, b = (fn(tokenizer, vte, tokenizer.features(pixels)).float() for fn in PATHS.values())
        worst = ((a - b).norm() / b.norm()).item()
    print(f"model check: the measured paths are encode_images' own (naive and fused); lean vs naive {worst:.1e}")
    return tokenizer, vte


def build_full(words: int, device: str, dtype: torch.dtype):
    """The Ovis2-8B visual parts, random, without an LLM (the VTE takes the LLM's width)."""
    from ovis.plugin_host import get_host

    host = get_host()
    entry = host.vision(FULL["vit"])
    backbone = entry.factory.from_spec(entry.spec, pretrained=False)
    hidden = host.llm(FULL["llm"]).spec.hidden_size
    tokenizer = VisualTokenizer(
        backbone,
        adapter="structural",
        visual_vocab_size=words,
        hidden_size=hidden,
        use_indicators=True,
        num_indicators=INDICATORS,
        hidden_stride=2,
    )
    vte = VisualEmbedding(words, hidden)
    return tokenizer.to(device=device, dtype=dtype), vte.to(device=device, dtype=dtype)


# -- measuring -------------------------------------------------------------------------------------------
def timed(fn, device: str) -> tuple[float, int, object]:
    """One call: seconds, peak bytes above the state before it, and its result."""
    baseline = reset_peak(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - start, peak_since(device, baseline), result


def measure_vit(tokenizer: VisualTokenizer, views: int, backward: bool, repeats: int, device: str, dtype) -> dict:
    """ViT + merge on ``views`` views: seconds per view (median) and the peak."""
    side = tokenizer.backbone.spec.image_size
    pixels = torch.randn(views, 3, side, side, device=device, dtype=dtype)
    tokenizer.backbone.requires_grad_(backward)

    def step():
        if not backward:
            with torch.no_grad():
                return tokenizer.features(pixels)
        out = tokenizer.features(pixels)
        out.backward(torch.ones_like(out) / out.numel())
        return None

    times, peaks = [], []
    for _ in range(repeats):
        for p in tokenizer.backbone.parameters():
            p.grad = None
        seconds, peak, _ = timed(step, device)
        times.append(seconds / views)
        peaks.append(peak)
    for p in tokenizer.backbone.parameters():
        p.grad = None
    tokenizer.backbone.requires_grad_(False)
    return {"per_view": statistics.median(times), "peak": max(peaks), "views": views}


def measure_paths(tokenizer, vte, views: int, backward: bool, warmup: int, repeats: int, device: str, dtype) -> dict:
    """naive and lean on the same merged features of ``views`` views, in turn (order alternating)."""
    tokens = tokenizer_tokens(tokenizer)
    gen = torch.Generator(device=device).manual_seed(0)
    features = torch.randn(views, tokens, tokenizer.head[0].in_features, device=device, generator=gen).to(dtype)
    params = [*tokenizer.head.parameters(), vte.weight]
    for p in params:
        p.requires_grad_(backward)
    features.requires_grad_(backward)
    grad_out = torch.randn(views, tokens, vte.weight.shape[1], device=device, generator=gen).to(dtype)

    def clear() -> None:
        # Outside the timed window: the peak of each call then counts the gradients it allocates.
        for t in [features, *params]:
            t.grad = None

    def step(fn):
        if not backward:
            with torch.no_grad():
                return fn(tokenizer, vte, features)
        out = fn(tokenizer, vte, features)
        out.backward(grad_out)
        return features.grad

    names = list(PATHS)
    for _ in range(warmup):
        for name in names:
            clear()
            step(PATHS[name])
    results = {name: {"times": [], "peaks": []} for name in names}
    last = {}
    for index in range(repeats):
        for name in names if index % 2 == 0 else names[::-1]:
            clear()
            seconds, peak, out = timed(lambda name=name: step(PATHS[name]), device)
            results[name]["times"].append(seconds)
            results[name]["peaks"].append(peak)
            last[name] = out.detach().float().cpu()
    if backward:
        results["param_grad_bytes"] = sum(p.numel() * p.element_size() for p in params)
    a, b = last["lean"], last["naive"]
    results["relative_error"] = ((a - b).norm() / b.norm().clamp_min(1e-30)).item()
    for p in params:
        p.grad = None
        p.requires_grad_(False)
    return results


def tokenizer_tokens(tokenizer: VisualTokenizer) -> int:
    patches = tokenizer.backbone.num_patches
    side, stride = int(patches**0.5), tokenizer.hidden_stride
    return (-(-side // stride)) ** 2


def cpu_flags() -> str:
    try:
        flags = next(
            line.split(":", 1)[1].split()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("flags")
        )
    except (OSError, StopIteration):
        return "unknown"
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16")
    have = [flag for flag in wanted if flag in flags]
    missing = [flag for flag in wanted if flag not in flags]
    return f"{' '.join(have)} (no {' '.join(missing)})" if missing else " ".join(have)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="Ovis2-8B sizes: aimv2-huge-patch14-448, V 65536")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--grid", default="3x3", help="the tile grid ROWSxCOLS (3x3 + a global view: 10 views)")
    parser.add_argument("--images", type=int, default=None, help="images per call (default: 2 tiny, 1 full)")
    parser.add_argument(
        "--vit-views", type=int, default=None, help="views the ViT is timed on (default: all tiny, 1 full)"
    )
    parser.add_argument("--warmup", type=int, default=None, help="default: 1 tiny, 0 full")
    parser.add_argument("--repeats", type=int, default=None, help="default: 3 tiny, 1 full")
    parser.add_argument("--threads", type=int, default=None, help="torch threads on the CPU (default: torch's)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["forward", "backward", "vit"])
    parser.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    opts = parser.parse_args(argv)
    preset = FULL if opts.full else TINY
    rows, cols = (int(n) for n in opts.grid.lower().split("x"))
    images = opts.images or preset["images"]
    warmup = opts.warmup if opts.warmup is not None else (0 if opts.full else 1)
    repeats = opts.repeats or (1 if opts.full else 3)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    torch.manual_seed(0)
    dtype = DTYPES[opts.dtype]
    where = machine(opts.device)
    if opts.device == "cpu":
        where += (
            f"; flags {cpu_flags()}; torch {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}"
        )
    print(f"# Tiled visual path: {where}, torch {torch.__version__}, {opts.dtype}")

    start = time.perf_counter()
    build = build_full if opts.full else build_tiny
    tokenizer, vte = build(preset["words"], opts.device, dtype)
    built = time.perf_counter() - start
    spec = tokenizer.backbone.spec
    per_view = tokenizer_tokens(tokenizer)
    views = num_views((rows, cols))
    vit_views = opts.vit_views or preset["vit_views"] or views * images
    words = tokenizer.head[0].out_features
    print(
        f"{spec.name} ({sum(p.numel() for p in tokenizer.backbone.parameters()) / 1e6:.0f}M), "
        f"{spec.image_size} px, {tokenizer.backbone.num_patches} patches, hidden_stride {tokenizer.hidden_stride} "
        f"-> {per_view} tokens per view; head {tokenizer.head[0].in_features} -> {words} words "
        f"(+{INDICATORS} indicator rows), VTE width {vte.weight.shape[1]}; built in {built:.1f} s"
    )
    tokens = views * per_view
    positions = block_length((rows, cols), per_view)
    print(
        f"grid {rows}x{cols}: {views} views per image -> {tokens} visual tokens per image through the head, "
        f"{positions} positions in the sequence with the indicators; {images} image(s) per call; "
        f"head-path times are the median of {repeats} after {warmup} warm-up, the ViT on {vit_views} view(s)\n"
    )
    raw: dict = {
        "machine": where,
        "torch": torch.__version__,
        "dtype": opts.dtype,
        "vit": spec.name,
        "grid": [rows, cols],
        "tokens_per_view": per_view,
        "visual_tokens_per_image": tokens,
        "positions_per_image": positions,
        "words": words,
        "hidden": vte.weight.shape[1],
        "images": images,
        "repeats": repeats,
        "warmup": warmup,
    }
    notes = []
    print("| pass | path | head path per image | peak memory | ViT per image | visual path images/s | tokens/s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for mode in ("forward", "backward"):
        if mode in opts.skip:
            continue
        backward = mode == "backward"
        label = "forward + backward" if backward else "forward"
        vit = None
        if "vit" not in opts.skip:
            vit = measure_vit(tokenizer, vit_views, backward, 1 if opts.full else repeats, opts.device, dtype)
        paths = measure_paths(tokenizer, vte, views * images, backward, warmup, repeats, opts.device, dtype)
        raw[mode] = {"vit": vit, **paths}
        vit_image = vit["per_view"] * views if vit else 0.0
        per_image = {}
        for name in PATHS:
            head = statistics.median(paths[name]["times"]) / images
            per_image[name] = head
            rate = 1 / (head + vit_image)
            print(
                f"| {label} | {name} | {fmt_seconds(head)} | {fmt_bytes(max(paths[name]['peaks']))} | "
                f"{fmt_seconds(vit_image) if vit else '-'} | {rate:.3g} | {rate * tokens:.4g} |",
                flush=True,
            )
        naive, lean = per_image["naive"], per_image["lean"]
        peak_naive, peak_lean = max(paths["naive"]["peaks"]), max(paths["lean"]["peaks"])
        ratios = {
            "head_speedup": naive / lean,
            "visual_path_speedup": (naive + vit_image) / (lean + vit_image),
            "peak_ratio": peak_lean / max(peak_naive, 1),
        }
        raw[mode]["ratios"] = ratios
        vit_note = (
            f"; ViT peak {fmt_bytes(vit['peak'])} on {vit['views']} view(s), {fmt_seconds(vit['per_view'])}/view"
            if vit
            else ""
        )
        peak_cell = f"{ratios['peak_ratio']:.2f}x the peak" if peak_naive >= 2**20 else "-"
        print(
            f"|   | lean / naive | speed {ratios['head_speedup']:.2f}x | {peak_cell} | | "
            f"speed {ratios['visual_path_speedup']:.2f}x with the ViT | |"
        )
        if backward:
            vit_note += (
                f"; both peaks include the head/LayerNorm/VTE gradients ({fmt_bytes(paths['param_grad_bytes'])})"
            )
        notes.append(f"{label}: lean vs naive relative error {paths['relative_error']:.1e}{vit_note}")
    print("\n" + "\n".join(notes))
    if opts.json:
        opts.json.write_text(json.dumps(raw, indent=1))
    return raw


if __name__ == "__main__":
    main()
