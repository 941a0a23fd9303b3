"""Generation speed of ``OvisRunner`` against plain Hugging Face ``generate`` and a bare decode loop.

For each model config and batch size (1 and 8) this measures, in one run on one machine:

* ``hf-text``        - the bare LLM's ``generate`` on a text-only prompt of the same token length as
                       the multimodal one (what the LLM costs without ovis);
* ``ovis-text``      - ``OvisRunner.generate`` on a text-only prompt (ovis' own overhead: per-row
                       stopping, streaming bookkeeping, embedding the prompt);
* ``ovis-image``     - ``OvisRunner.generate`` with one image per prompt (adds the visual tokenizer,
                       the softmax over the visual vocabulary and the VTE product);

and at batch 1 only, on the same image prompt:

* ``plain-loop``     - the floor: a minimal hand-written greedy loop over the same LLM and its KV
                       cache (prefill from the prompt embeddings, then one forward and argmax a token);
* ``original-style`` - what the v1 runner did: embed the prompt, then the LLM's ``generate(inputs_embeds=...,
                       attention_mask=...)`` at batch 1;
* ``ovis-image-hf``  - ``ovis-image`` through ``generate`` (``RunnerArguments(decode_loop="hf")``), the
                       runner's path before it had a decode loop of its own.

Every run generates exactly the tokens asked for (end-of-turn ids are disabled, not overridden with
``min_new_tokens``, which would add a logits processor to ``generate``) so the work is equal. Each
mode runs once for one new token (time to first token, TTFT: image encoding and prefill included)
and once for ``--new-tokens``; decode ms/token is the difference over ``--new-tokens - 1``. Modes run
in turn, ``--repeats`` times after a warm-up; figures are the best of the repeats. Ratios are against
``original-style`` at batch 1 and ``hf-text`` at larger batches. One torch thread by default
(``--threads``), float32 on a CPU, timed in that thread's CPU time (other processes' load barely
moves it); with more threads or on a GPU, in wall time. "Outside forward" is each step's time
outside the LLM's forward call (the loop's own Python); on a GPU, where the forward returns before
its kernels finish, it also holds the wait for them.

    python benchmarks/generation_speed.py                 # embedded default + a larger config
    python benchmarks/generation_speed.py --configs default --batches 1 --new-tokens 64 --repeats 9
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml
from PIL import Image
from transformers import DynamicCache

# A larger config than the toy default: a ViT-S-like CLIP at 224 px (256 patches) and an 8-layer
# Qwen2 of width 512 with the real 152k-token Qwen vocabulary, V = 8192. Built from presets
# written to a temporary registry (OVIS_REGISTRY_PATH), random weights, nothing downloaded.
LARGER_VIT = {
    "name": "bench-clip-s-224",
    "family": "clip",
    "builder": "hf-clip-vision",
    "plugin": "ovis-plugin-hf-vision",
    "source": "transformers",
    "weights": None,
    "tiny": True,
    "hidden_size": 384,
    "image_size": 224,
    "patch_size": 14,
    "num_layers": 6,
    "num_heads": 6,
    "has_cls_token": True,
    "description": "benchmark-only CLIP ViT-S/14 at 224 px",
    "preprocess": {
        "image_size": 224,
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
        "resize": "pad",
        "interpolation": "bicubic",
    },
    "architecture": {
        "hidden_size": 384,
        "intermediate_size": 1536,
        "num_hidden_layers": 6,
        "num_attention_heads": 6,
        "patch_size": 14,
        "image_size": 224,
        "projection_dim": 256,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1.0e-5,
    },
}
LARGER_LLM_CHANGES = {
    "name": "bench-qwen-512",
    "hidden_size": 512,
    "num_layers": 8,
    "description": "benchmark-only 8-layer Qwen2 of width 512 with the real vocabulary",
}
LARGER_LLM_ARCH = {
    "hidden_size": 512,
    "intermediate_size": 1536,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
}
CONFIGS = {
    "default": {"vit": "clip-toy", "llm": "qwen-toy", "V": 1024},
    "larger": {"vit": "bench-clip-s-224", "llm": "bench-qwen-512", "V": 8192},
}


def write_bench_registry(root: Path) -> None:
    import ovis_registry

    base = yaml.safe_load((Path(ovis_registry.__file__).parent / "llm" / "qwen2.5-tiny.yaml").read_text())
    llm = {**base, **LARGER_LLM_CHANGES, "architecture": {**base["architecture"], **LARGER_LLM_ARCH}}
    (root / "vision").mkdir(parents=True, exist_ok=True)
    (root / "llm").mkdir(parents=True, exist_ok=True)
    (root / "vision" / "bench-clip-s-224.yaml").write_text(yaml.safe_dump(LARGER_VIT))
    (root / "llm" / "bench-qwen-512.yaml").write_text(yaml.safe_dump(llm))


class ForwardClock:
    """Time spent inside the LLM's forward calls (module hooks), so that the rest of a step, the
    decoding loop's own Python (inputs, token choice, stopping, streaming), can be told apart.
    Equal inputs cost the forward the same in every mode, so this part is what a loop changes."""

    def __init__(self, module: torch.nn.Module, clock) -> None:
        self.clock, self.inside, self._entered = clock, 0.0, 0.0
        module.register_forward_pre_hook(self._enter)
        module.register_forward_hook(self._leave)

    def _enter(self, *_) -> None:
        self._entered = self.clock()

    def _leave(self, *_) -> None:
        self.inside += self.clock() - self._entered


def interleaved_best(fns: dict, new_tokens: int, repeats: int, forward: ForwardClock) -> dict[str, dict[str, float]]:
    """Warm each mode up, then run them in turn ``repeats`` times (so a burst of load elsewhere hits
    every mode alike), each once for one new token (the time to first token) and once for
    ``new_tokens``. Times are the best of the repeats (the run least disturbed by other processes);
    the time per decoding step is (best full run - best one-token run) / (new_tokens - 1), free of
    what a call costs once (setup, prefill). The loop's time per step outside the LLM's forward is
    the same difference taken run by run, median of the repeats."""

    def timed(fn, n: int) -> tuple[float, float]:
        inside = forward.inside
        elapsed = fn(n, forward.clock)
        return elapsed, elapsed - (forward.inside - inside)

    for fn in fns.values():
        fn(1, forward.clock)
        fn(new_tokens, forward.clock)
    runs: dict[str, list[tuple[tuple[float, float], tuple[float, float]]]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            runs[name].append((timed(fn, 1), timed(fn, new_tokens)))
    steps = max(1, new_tokens - 1)
    best = {}
    for name, times in runs.items():
        first, total = min(one[0] for one, _ in times), min(full[0] for _, full in times)
        outside = statistics.median((full[1] - one[1]) / steps for one, full in times)
        best[name] = {"first": first, "total": total, "step": (total - first) / steps, "outside": outside}
    return best


def bench_config(
    name: str, spec: dict, batches: list[int], new_tokens: int, repeats: int, device: str, dtype: torch.dtype, clock
) -> list[dict]:
    from ovis.composer import compose
    from ovis.serve.runner import OvisRunner, RunnerArguments

    torch.manual_seed(0)
    model, processor = compose(vit=spec["vit"], llm=spec["llm"], visual_vocab_size=spec["V"])
    model = model.to(device=device, dtype=dtype).eval()
    runner = OvisRunner(model=model, processor=processor)
    hf_runner = OvisRunner(
        RunnerArguments(model_path="<in memory>", decode_loop="hf"), model=model, processor=processor
    )
    for r in (runner, hf_runner):
        r.eos_ids = set()  # generate exactly the tokens asked for in every mode...
    # ...generate too, without min_new_tokens: that adds a logits processor, work the v1 runner did not do
    model.llm.generation_config.eos_token_id = None
    pad = processor.tokenizer.pad_token_id
    image = Image.new("RGB", (320, 240), (200, 60, 40))
    question = "Describe the picture in detail, please."
    params = runner.args.generation_params(max_new_tokens=new_tokens)
    image_prompt = runner.prepare(question, image, params)
    length = len(image_prompt.sample.input_ids)
    # A text prompt of the same length, for the bare LLM and for ovis without images.
    base = len(runner.prepare("", None, params).sample.input_ids)
    words = max(1, length - base)
    while len(runner.prepare(" ".join(["word"] * words), None, params).sample.input_ids) > length:
        words -= 1
    filler = " ".join(["word"] * words)
    text_ids = runner.prepare(filler, None, params).sample.input_ids
    one = processor.collate([image_prompt.sample], padding_side="left")
    image_ids = one["input_ids"].to(device)
    image_mask = one["attention_mask"].to(device)
    pixels = one["pixel_values"].to(device, dtype=dtype)
    # transformers renamed past_key_values to cache during 5.x
    cache_name = "cache" if "cache" in inspect.signature(model.llm.forward).parameters else "past_key_values"

    forward = ForwardClock(model.llm, clock)

    def sync() -> None:
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()

    rows = []
    for batch in batches:

        def ovis_run(with_image: bool, which: OvisRunner = runner, batch: int = batch):
            def go(n: int, clock) -> float:
                p = which.args.generation_params(max_new_tokens=n)
                requests = [
                    which.prepare(question, image, p) if with_image else which.prepare(filler, None, p)
                    for _ in range(batch)
                ]
                start = clock()
                done = which.generate(requests)
                sync()
                elapsed = clock() - start
                assert all(c.completion_tokens == n for c in done), [c.completion_tokens for c in done]
                return elapsed

            return go

        def hf_run(n: int, clock, batch: int = batch) -> float:
            ids = torch.tensor([text_ids] * batch, device=device)
            start = clock()
            with torch.inference_mode():
                out = model.llm.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    do_sample=False,
                    max_new_tokens=n,
                    pad_token_id=pad,
                )
            sync()
            elapsed = clock() - start
            assert out.shape[1] - ids.shape[1] == n
            return elapsed

        def original_style(n: int, clock) -> float:
            # The v1 runner: merge the image into the prompt embeddings, then the LLM's generate at batch 1.
            start = clock()
            with torch.inference_mode():
                embeds = model.embed_inputs(image_ids, pixels)
                out = model.llm.generate(
                    inputs_embeds=embeds,
                    attention_mask=image_mask,
                    do_sample=False,
                    max_new_tokens=n,
                    pad_token_id=pad,
                )
            sync()
            elapsed = clock() - start
            assert out.shape[1] == n
            return elapsed

        def plain_loop(n: int, clock) -> float:
            # The floor: nothing but the LLM's forward over its KV cache and an argmax per token.
            start = clock()
            with torch.inference_mode():
                embeds = model.embed_inputs(image_ids, pixels)
                cache = {cache_name: DynamicCache(config=model.llm.config)}
                out = model.llm(inputs_embeds=embeds, use_cache=True, logits_to_keep=1, **cache)
                token = out.logits[:, -1].argmax(-1, keepdim=True)
                token.tolist()
                for step in range(length, length + n - 1):
                    position = torch.tensor([[step]], device=device)
                    out = model.llm(input_ids=token, position_ids=position, use_cache=True, logits_to_keep=1, **cache)
                    token = out.logits[:, -1].argmax(-1, keepdim=True)
                    token.tolist()  # a token a step reaches Python, as in every other mode
            return clock() - start

        modes = {"hf-text": hf_run, "ovis-text": ovis_run(False), "ovis-image": ovis_run(True)}
        if batch == 1:
            modes |= {
                "plain-loop": plain_loop,
                "original-style": original_style,
                "ovis-image-hf": ovis_run(True, hf_runner),
            }
        for mode, m in interleaved_best(modes, new_tokens, repeats, forward).items():
            rows.append(
                {
                    "config": name,
                    "batch": batch,
                    "mode": mode,
                    "prompt_tokens": len(text_ids) if mode in ("hf-text", "ovis-text") else length,
                    "tokens_per_s": batch * new_tokens / m["total"],
                    "ttft_ms": m["first"] * 1000,
                    "decode_ms": m["step"] * 1000,
                    "outside_ms": m["outside"] * 1000,
                }
            )
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    for row in rows:
        row["params_m"] = params_m
    return rows


def cpu_flags() -> str:
    """The SIMD flags that decide float32/bf16 kernel speed on this CPU (figures depend on them)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown"
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_bf16")
    present = set(flags.split(":", 1)[1].split())
    return " ".join(flag for flag in wanted if flag in present) or "none of avx2/avx512/amx"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1; 0: torch's choice)")
    parser.add_argument("--device", default=None, help="default: cuda if present, else cpu")
    parser.add_argument(
        "--dtype", default=None, choices=["float32", "bfloat16"], help="default: float32 on a CPU, bfloat16 on a GPU"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype_name = args.dtype or ("bfloat16" if torch.device(device).type == "cuda" else "float32")
    dtype = getattr(torch, dtype_name)
    with tempfile.TemporaryDirectory() as tmp:
        write_bench_registry(Path(tmp))
        os.environ["OVIS_REGISTRY_PATH"] = tmp
        from ovis.plugin_host import reset_host

        reset_host()
        # One CPU thread: count the CPU time that thread spends, which load from other processes on a
        # shared machine barely moves (wall time moved rows by 2-5x); else wall time.
        cpu_clock = torch.device(device).type == "cpu" and torch.get_num_threads() == 1
        clock = time.thread_time if cpu_clock else time.perf_counter
        rows = []
        for name in args.configs:
            rows += bench_config(name, CONFIGS[name], args.batches, args.new_tokens, args.repeats, device, dtype, clock)
    where = (
        torch.cuda.get_device_name()
        if torch.device(device).type == "cuda"
        else f"cpu x{torch.get_num_threads()} threads, flags: {cpu_flags()}"
    )
    print(
        f"\n{args.new_tokens} new tokens per sequence, greedy, {dtype_name}, best of {args.repeats} after a "
        f"warm-up; {where}; torch {torch.__version__}; "
        f"{'thread CPU time' if cpu_clock else 'wall time'}"
    )
    print("ratios: against original-style at batch 1, against hf-text at larger batches\n")
    print(
        "| config | params | batch | mode | prompt tokens | tokens/s | decode ms/token | vs ref "
        "| outside forward ms/token | vs ref | TTFT ms | vs ref |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    reference = {(r["config"], r["batch"]): r for r in rows if r["mode"] == "hf-text"}
    reference |= {(r["config"], r["batch"]): r for r in rows if r["mode"] == "original-style"}
    for r in rows:
        ref = reference[(r["config"], r["batch"])]
        print(
            f"| {r['config']} | {r['params_m']:.1f}M | {r['batch']} | {r['mode']} | {r['prompt_tokens']} | "
            f"{r['tokens_per_s']:.1f} | {r['decode_ms']:.2f} | {r['decode_ms'] / ref['decode_ms']:.2f} | "
            f"{r['outside_ms']:.3f} | {r['outside_ms'] / ref['outside_ms']:.2f} | "
            f"{r['ttft_ms']:.1f} | {r['ttft_ms'] / ref['ttft_ms']:.2f} |"
        )


if __name__ == "__main__":
    main()
