"""Generation speed of ``OvisRunner`` against plain Hugging Face ``generate`` on the same LLM.

For each model config and batch size (1 and 8) this measures, in one run on one machine:

* ``hf-text``   - the bare LLM's ``generate`` on a text-only prompt of the same token length as
                  the multimodal one (the reference: what the LLM costs without ovis);
* ``ovis-text`` - ``OvisRunner.generate`` on a text-only prompt (ovis' own overhead: per-row
                  stopping, streaming bookkeeping, embedding the prompt);
* ``ovis-image``- ``OvisRunner.generate`` with one image per prompt (adds the visual tokenizer,
                  the softmax over the visual vocabulary and the VTE product).

Every run generates exactly ``--new-tokens`` tokens (end-of-turn ids are disabled) so the work
is equal. Time to first token (TTFT) includes image encoding and the prefill. Modes run in turn, ``--repeats``
times after a warm-up, and figures are medians; ratios are against ``hf-text`` at the same batch size.

    python benchmarks/generation_speed.py                 # embedded default + a larger config
    python benchmarks/generation_speed.py --configs default --new-tokens 64
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml
from PIL import Image
from transformers.generation.streamers import BaseStreamer

# A larger config than the toy default: a ViT-S-like CLIP at 224 px (256 patches) and an 8-layer
# Qwen2 of width 512 with the real 152k-token Qwen vocabulary, V = 8192. Built from presets
# written to a temporary registry (OVIS_REGISTRY_PATH), random weights, nothing downloaded.
LARGER_VIT = {
    "name": "bench-clip-s-224", "family": "clip", "builder": "hf-clip-vision", "plugin": "ovis-plugin-hf-vision",
    "source": "transformers", "weights": None, "tiny": True, "hidden_size": 384, "image_size": 224,
    "patch_size": 14, "num_layers": 6, "num_heads": 6, "has_cls_token": True,
    "description": "benchmark-only CLIP ViT-S/14 at 224 px",
    "preprocess": {"image_size": 224, "mean": [0.48145466, 0.4578275, 0.40821073],
                   "std": [0.26862954, 0.26130258, 0.27577711], "resize": "pad", "interpolation": "bicubic"},
    "architecture": {"hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 6,
                     "num_attention_heads": 6, "patch_size": 14, "image_size": 224, "projection_dim": 256,
                     "hidden_act": "quick_gelu", "layer_norm_eps": 1.0e-5},
}
LARGER_LLM_CHANGES = {"name": "bench-qwen-512", "hidden_size": 512, "num_layers": 8,
                      "description": "benchmark-only 8-layer Qwen2 of width 512 with the real vocabulary"}
LARGER_LLM_ARCH = {"hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 8,
                   "num_attention_heads": 8, "num_key_value_heads": 4}
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


class FirstTokenClock(BaseStreamer):
    """Records when ``generate`` hands over its first new token (its first ``put`` is the prompt)."""

    def __init__(self) -> None:
        self.puts = 0
        self.first: float | None = None

    def put(self, value) -> None:
        self.puts += 1
        if self.puts == 2 and self.first is None:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


def interleaved_medians(fns: dict, repeats: int) -> dict[str, tuple[float, float]]:
    """Warm each up, then run them in turn ``repeats`` times (so a burst of load elsewhere hits
    every mode alike) and keep each one's median total time and time to first token."""
    for fn in fns.values():
        fn()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(fn())
    return {name: (statistics.median(t for t, _ in runs), statistics.median(f for _, f in runs))
            for name, runs in times.items()}


def bench_config(name: str, spec: dict, batches: list[int], new_tokens: int, repeats: int) -> list[dict]:
    from ovis.composer import compose
    from ovis.serve.runner import OvisRunner

    torch.manual_seed(0)
    model, processor = compose(vit=spec["vit"], llm=spec["llm"], visual_vocab_size=spec["V"])
    runner = OvisRunner(model=model.eval(), processor=processor)
    runner.eos_ids = set()  # generate exactly new_tokens in every mode
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
    rows = []
    for batch in batches:
        def ovis_run(with_image: bool, batch: int = batch):
            def go():
                requests = [runner.prepare(question, image, params) if with_image else
                            runner.prepare(filler, None, params) for _ in range(batch)]
                start = time.perf_counter()
                done = runner.generate(requests)
                total = time.perf_counter() - start
                assert all(c.completion_tokens == new_tokens for c in done), [c.completion_tokens for c in done]
                return total, min(c.first_token_s for c in done)
            return go

        def hf_run(batch: int = batch):
            ids = torch.tensor([text_ids] * batch)
            clock = FirstTokenClock()
            start = time.perf_counter()
            with torch.inference_mode():
                out = model.llm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                         max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                         pad_token_id=processor.tokenizer.pad_token_id, streamer=clock)
            total = time.perf_counter() - start
            assert out.shape[1] - ids.shape[1] == new_tokens
            return total, clock.first - start

        medians = interleaved_medians(
            {"hf-text": hf_run, "ovis-text": ovis_run(False), "ovis-image": ovis_run(True)}, repeats)
        for mode, (total, first) in medians.items():
            rows.append({"config": name, "batch": batch, "mode": mode,
                         "prompt_tokens": length if mode == "ovis-image" else len(text_ids),
                         "tokens_per_s": batch * new_tokens / total, "ttft_ms": first * 1000, "total_s": total})
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    for row in rows:
        row["params_m"] = params_m
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        write_bench_registry(Path(tmp))
        os.environ["OVIS_REGISTRY_PATH"] = tmp
        from ovis.plugin_host import reset_host

        reset_host()
        rows = []
        for name in args.configs:
            rows += bench_config(name, CONFIGS[name], args.batches, args.new_tokens, args.repeats)
    device = "cuda" if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()} threads"
    print(f"\n{args.new_tokens} new tokens per sequence, greedy, median of {args.repeats} after a warm-up; "
          f"{device}; torch {torch.__version__}\n")
    print("| config | params | batch | mode | prompt tokens | tokens/s | vs hf-text | TTFT ms | vs hf-text |")
    print("|---|---|---|---|---|---|---|---|---|")
    reference = {(r["config"], r["batch"]): r for r in rows if r["mode"] == "hf-text"}
    for r in rows:
        ref = reference[(r["config"], r["batch"])]
        print(f"| {r['config']} | {r['params_m']:.1f}M | {r['batch']} | {r['mode']} | {r['prompt_tokens']} | "
              f"{r['tokens_per_s']:.1f} | {r['tokens_per_s'] / ref['tokens_per_s']:.2f} | {r['ttft_ms']:.1f} | "
              f"{r['ttft_ms'] / ref['ttft_ms']:.2f} |")


if __name__ == "__main__":
    main()
