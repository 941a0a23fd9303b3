"""Training throughput you can plan with: samples/s and tokens/s per device and model FLOPs
utilisation (MFU) of the real ``ovis.train.Trainer`` for a composition and a stage.

A model is composed with random weights (``ovis.compose(..., pretrained=False)``; nothing is
downloaded: the LLM's tokenizer is its family's offline one), optionally at reduced depth
(``--llm-layers`` / ``--vit-layers`` edit the presets' layer counts here, before building, so the
width of every matmul stays the preset's). Synthetic samples, one random image each and a text
length that is fixed or uniform in a range (``--text-tokens 256`` or ``64-512``), go through the
trainer's own collator, engine (plain PyTorch with ``--zero none``, DeepSpeed ZeRO-2 / ZeRO-3),
precision, gradient checkpointing and packing (``data.packing``). The first ``--warmup`` steps
are left out; checkpoint writes are turned off (the benchmark times steps, not disk).

Model FLOPs (what MFU counts) are counted analytically from the built model, per sample, with
the visual path included. Per matmul of ``m`` multiply-accumulates per token over ``t`` tokens:

* forward ``2 m t``;
* backward ``2 m t`` for the weight gradient where the weight trains, plus ``2 m t`` for the
  input gradient where a gradient has to pass (anything trainable upstream; inside a pre-norm
  block with trainable parameters, everywhere). So a trained part costs ``6 m t`` (the familiar
  ``6 N`` per token), a frozen part that gradients pass through ``4 m t``, a frozen part with
  nothing trainable before it (stage 1-2's frozen ViT blocks below the trained ones; the LLM is
  never that) ``2 m t``, the patch convolution never an input gradient (its input is pixels);
* attention, per block over a sequence of ``L`` positions and attention width ``A`` (heads x head
  dim): ``4 L^2 A`` forward (``QK^T`` and ``AV``, the full square, as PaLM's MFU and torch's
  ``FlopCounterMode`` count), twice that backward where a gradient passes.

The parts, in the order the gradient's reach is decided: the ViT's patch convolution (``t`` =
patches per view), its blocks (``t`` = patches + prefix tokens per view, attention over them), the
visual head ``Linear(s^2 D, V')`` (``t`` = visual tokens per view), the VTE product
``probabilities [t, V'] x table [V', H]`` (a matmul of ``V' H`` per visual token), the LLM's
decoder layers (``t`` = the sample's real positions, padding excluded, attention over them) and
its LM head, which ``TrainStep`` applies at labelled positions only. Embedding look-ups, norms,
softmax and the loss are not counted. So, for stage 3 of the 8B pair, a sample of ``T`` positions,
``k`` of them labelled, with one image: ``6 (N_vit 577 + D V' 576 + V' H 576 + N_llm T) + 6 H
vocab k`` plus the attention terms and ``4 x 588 D x 576`` for the patch convolution, ``N`` the
blocks' matmul parameters.

MFU = model FLOPs per second per device / peak. Peaks: a table of dense bf16 tensor-core peaks for
known GPUs (A100/A800 312 TFLOP/s, H100/H800 SXM and H200 989, H100 PCIe 756, L40S 362); on the
CPU (and in addition on any GPU) the rate of a large matmul in the training dtype measured in this
process (before and after the run; the better of the two), so that a CPU MFU means something.
Recomputation is not model work: gradient checkpointing (a second forward pass of the blocks a
gradient goes through) and the fused visual path's recomputed head logits are counted separately
as hardware FLOPs (HFU).

The LLaVA-1.5 anchor (LLaVA-1.5-13B: 665K samples in ~20 h on 8 A100-80G, ~1.2 samples/s per GPU)
is converted to MFU with the same formula, for its architecture (Vicuna-13B trained, CLIP
ViT-L/14-336 frozen, the two-layer MLP projector trained, HF's LM head over every position), at an
assumed text length per sample (``--anchor-text-tokens``, default 300; printed with 150 and 600
beside it: no published mean was found).

    python benchmarks/train_throughput.py --toy                       # the toy pair (clip-toy + qwen-toy)
    python benchmarks/train_throughput.py --toy --sweep               # zero 2/3 x checkpointing x packing
    python benchmarks/train_throughput.py --vit clip --llm llama3-8b --llm-layers 2 \\
        --visual-vocab 16384 --stage 1 --zero none --batch 1 --steps 3 --warmup 1   # full width, CPU
    python benchmarks/train_throughput.py --vit clip --llm llama3-8b --llm-layers 16 --stage 3 \\
        --zero 2 --precision bf16 --checkpointing on --batch 8 --text-tokens 64-512   # one H200
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ovis.model.merging import IGNORE_INDEX
from ovis.processing import EncodedSample, OvisProcessor
from ovis.train.step import _plain_head, causal_lm

TOY = {"vit": "clip-toy", "llm": "qwen-toy", "visual_vocab": 1024, "text_tokens": "16-160"}
#: Dense bf16 tensor-core peaks (FLOP/s) by a substring of ``torch.cuda.get_device_name()``; the
#: first match wins, so the more specific names come first.
GPU_BF16_PEAKS = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H800", 989e12),
    ("H200", 989e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
)
#: LLaVA-1.5-13B fine-tuning: 665,298 samples (llava_v1_5_mix665k.json) in ~20 h on 8 A100-80G.
LLAVA_SAMPLES, LLAVA_HOURS, LLAVA_GPUS, LLAVA_IMAGE_FRACTION = 665_298, 20.0, 8, 1 - 40_688 / 665_298
A100_BF16 = 312e12


# -- model FLOPs -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Unit:
    """One part of the forward pass, in order: its matmuls and whether a gradient reaches it.

    ``per`` says what ``macs`` is per: ``patch`` / ``vit`` (ViT position) / ``visual`` (visual
    token) of each view, ``llm`` (LLM position) or ``labelled`` (labelled position) of a sample.
    """

    name: str
    per: str
    macs: int  # multiply-accumulates per position through the unit's matrices
    trainable_macs: int  # of which through trained weights
    attention_width: int = 0  # heads x head dim of its attention (0: none)
    has_trainable: bool = False
    upstream_trainable: bool = False  # something trained runs before it
    block: bool = False  # a pre-norm block: a trained parameter inside needs the gradient throughout
    data_input: bool = False  # fed by the data: never an input gradient
    checkpointed: bool = False  # recomputed in the backward pass under gradient checkpointing

    @property
    def input_grad(self) -> bool:
        return not self.data_input and (self.upstream_trainable or (self.block and self.has_trainable))

    @property
    def backward(self) -> bool:
        return self.input_grad or self.trainable_macs > 0


@dataclass
class FlopPlan:
    """The units of a model and the sizes that turn them into FLOPs per sample."""

    units: list[Unit]
    patches: int  # per view
    vit_positions: int  # per view (patches + prefix tokens)
    visual_tokens: int  # per view
    recompute_head: bool = False  # the fused visual path recomputes the head logits backward

    def sample_flops(self, positions: int, labelled: int, views: int) -> dict[str, float]:
        """Model FLOPs (forward, backward) and recomputed FLOPs of one sample."""
        counts = {
            "patch": views * self.patches,
            "vit": views * self.vit_positions,
            "visual": views * self.visual_tokens,
            "llm": positions,
            "labelled": labelled,
        }
        # Attention per block: views of vit_positions each, or one sequence of the sample's positions.
        square = {"vit": views * self.vit_positions**2, "llm": positions**2}
        forward = backward = recompute = 0.0
        for unit in self.units:
            t = counts[unit.per]
            fwd = 2.0 * unit.macs * t + 4.0 * square.get(unit.per, 0) * unit.attention_width
            forward += fwd
            if unit.input_grad:
                backward += 2.0 * unit.macs * t + 8.0 * square.get(unit.per, 0) * unit.attention_width
            backward += 2.0 * unit.trainable_macs * t
            if unit.checkpointed and unit.backward:
                recompute += fwd
            if unit.name == "visual_head" and self.recompute_head and (unit.backward or self._vte_backward()):
                recompute += 2.0 * unit.macs * t
        return {"forward": forward, "backward": backward, "model": forward + backward, "recompute": recompute}

    def _vte_backward(self) -> bool:
        return any(u.name == "vte" and u.backward for u in self.units)

    def summary(self) -> dict[str, Any]:
        return {
            "units": len(self.units),
            "trainable_units": sum(u.has_trainable for u in self.units),
            "patches": self.patches,
            "vit_positions": self.vit_positions,
            "visual_tokens": self.visual_tokens,
        }


def _linear_macs(module: nn.Module) -> tuple[int, int]:
    """``(in x out summed over its Linear layers, the same over those whose weight trains)``.
    From the modules' shapes, so it holds under ZeRO-3's partitioned parameters too."""
    total = trained = 0
    for m in module.modules():
        if isinstance(m, nn.Linear):
            macs = m.in_features * m.out_features
            total += macs
            trained += macs if m.weight.requires_grad else 0
    return total, trained


def _trains(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def _llm_attention_width(config: Any) -> int:
    heads = config.num_attention_heads
    return heads * (getattr(config, "head_dim", None) or config.hidden_size // heads)


def flop_plan(model: nn.Module, *, checkpointing: bool = False) -> FlopPlan:
    """The :class:`FlopPlan` of an Ovis model whose ``requires_grad`` flags say what trains."""
    backbone = model.backbone
    spec = backbone.spec
    blocks = list(backbone.blocks())
    in_blocks = {id(p) for b in blocks for p in b.parameters()}
    conv = next((m for m in backbone.modules() if isinstance(m, nn.Conv2d)), None)
    conv_ids = {id(p) for p in conv.parameters()} if conv is not None else set()
    # The ViT's other parameters (class / position embeddings, pre-norm) act before block 0. A
    # post-norm the features skip is frozen by apply_train_modules as unused.
    stem = [p for p in backbone.parameters() if id(p) not in in_blocks and id(p) not in conv_ids]
    units: list[Unit] = []

    def add(name: str, per: str, macs: int, trained: int, trains: bool, **kw: Any) -> None:
        upstream = any(u.has_trainable for u in units)
        units.append(Unit(name, per, macs, trained, has_trainable=trains, upstream_trainable=upstream, **kw))

    if conv is not None:
        macs = conv.out_channels * (conv.in_channels // conv.groups) * conv.kernel_size[0] * conv.kernel_size[1]
        add("vit_patch_embed", "patch", macs, macs if conv.weight.requires_grad else 0, _trains(conv), data_input=True)
    add("vit_stem", "vit", 0, 0, any(p.requires_grad for p in stem))
    for i, block in enumerate(blocks):
        macs, trained = _linear_macs(block)
        add(
            f"vit_block_{i}",
            "vit",
            macs,
            trained,
            _trains(block),
            attention_width=spec.hidden_size,
            block=True,
            checkpointed=checkpointing,
        )
    head = model.visual_tokenizer.head
    structural = model.config.adapter == "structural"
    if structural:
        linear = head[0]
        macs = linear.in_features * linear.out_features
        add("visual_head", "visual", macs, macs if linear.weight.requires_grad else 0, _trains(head))
        words = linear.out_features
        vte = model.vte.weight
        hidden = model.config.llm_config.hidden_size
        add("vte", "visual", words * hidden, words * hidden if vte.requires_grad else 0, vte.requires_grad)
    else:
        macs, trained = _linear_macs(head)
        add("visual_head", "visual", macs, trained, _trains(head))
        add("vte", "visual", 0, 0, _trains(model.vte))  # indicator rows only: look-ups
    lm = causal_lm(model.llm)
    add("llm_embed", "llm", 0, 0, _trains(lm.get_input_embeddings()))
    decoder = lm.get_decoder()
    width = _llm_attention_width(lm.config)
    for i, layer in enumerate(decoder.layers):
        macs, trained = _linear_macs(layer)
        add(
            f"llm_layer_{i}",
            "llm",
            macs,
            trained,
            _trains(layer),
            attention_width=width,
            block=True,
            checkpointed=checkpointing,
        )
    norm_params = [p for name, p in decoder.named_parameters() if not name.startswith(("layers.", "embed_tokens."))]
    add("llm_norm", "llm", 0, 0, any(p.requires_grad for p in norm_params))
    out = lm.get_output_embeddings()
    macs = out.in_features * out.out_features
    # TrainStep runs a plain head at labelled positions only; a soft-capped one over every position.
    add(
        "lm_head",
        "labelled" if _plain_head(lm) else "llm",
        macs,
        macs if out.weight.requires_grad else 0,
        out.weight.requires_grad,
    )
    fused = (
        structural
        and model.config.tokenize_function == "softmax"
        and getattr(model.config, "visual_path", "fused") == "fused"
    )
    prefix = getattr(backbone, "num_prefix_tokens", int(spec.has_cls_token))
    return FlopPlan(
        units,
        patches=spec.num_patches,
        vit_positions=spec.num_patches + prefix,
        visual_tokens=model.tokens_per_tile,
        recompute_head=fused,
    )


def llava15_13b_plan() -> FlopPlan:
    """LLaVA-1.5-13B fine-tuning (Vicuna-13B v1.5 and the MLP projector train, CLIP ViT-L/14-336 is
    frozen), written out from the published architectures, for the anchor."""
    d, vit_i, hidden, inter, vocab = 1024, 4096, 5120, 13824, 32000
    units = [Unit("vit_patch_embed", "patch", 3 * 14 * 14 * d, 0, data_input=True)]
    units += [
        Unit(f"vit_block_{i}", "vit", 4 * d * d + 2 * d * vit_i, 0, attention_width=d, block=True) for i in range(24)
    ]
    proj = d * hidden + hidden * hidden
    units.append(Unit("projector", "visual", proj, proj, has_trainable=True))
    units += [
        Unit(
            f"llm_layer_{i}",
            "llm",
            4 * hidden * hidden + 3 * hidden * inter,
            4 * hidden * hidden + 3 * hidden * inter,
            attention_width=hidden,
            has_trainable=True,
            upstream_trainable=True,
            block=True,
        )
        for i in range(40)
    ]
    # HF's LlamaForCausalLM computes the logits of every position.
    units.append(Unit("lm_head", "llm", hidden * vocab, hidden * vocab, has_trainable=True, upstream_trainable=True))
    return FlopPlan(units, patches=576, vit_positions=577, visual_tokens=576)


def llava_anchor(text_tokens: int, samples_per_s: float | None = None) -> dict[str, float]:
    """The anchor's model FLOPs per sample (the image fraction of the 665K mix weighted in) and MFU."""
    plan = llava15_13b_plan()
    with_image = plan.sample_flops(576 + text_tokens, 0, 1)["model"]
    text_only = plan.sample_flops(text_tokens, 0, 0)["model"]
    per_sample = LLAVA_IMAGE_FRACTION * with_image + (1 - LLAVA_IMAGE_FRACTION) * text_only
    rate = samples_per_s or LLAVA_SAMPLES / (LLAVA_HOURS * 3600 * LLAVA_GPUS)
    return {
        "text_tokens": text_tokens,
        "flops_per_sample": per_sample,
        "samples_per_s_per_gpu": rate,
        "mfu": per_sample * rate / A100_BF16,
    }


# -- synthetic data --------------------------------------------------------------------------------
def parse_lengths(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition("-")
    low, high = int(lo), int(hi or lo)
    if not 0 < low <= high:
        raise SystemExit(f"--text-tokens {text!r}: expected N or LOW-HIGH with 0 < LOW <= HIGH")
    return low, high


class SyntheticSamples(torch.utils.data.Dataset):
    """Encoded samples, one random image each: a short conversation encoded by the model's own
    processor (its image block, chat tokens and labels), then ``text`` extra random text tokens, the
    first ``1 - labelled`` of them unlabelled (a prompt), the rest labelled (a reply)."""

    def __init__(
        self, processor: Any, count: int, text: tuple[int, int], labelled: float, vocab: int, seed: int = 0
    ) -> None:
        from PIL import Image

        size = processor.image_processor.image_size
        image = Image.new("RGB", (size, size), (120, 130, 140))
        template = processor.encode(
            [
                {"role": "user", "content": "<image>\nDescribe the picture."},
                {"role": "assistant", "content": "A picture."},
            ],
            [image],
        )
        self.base_ids, self.base_labels = list(template.input_ids), list(template.labels)
        self.pixel_shape, self.grids = tuple(template.pixel_values.shape), template.grids
        tokenizer = processor.tokenizer
        self.vocab = min(len(tokenizer), vocab)
        self.special = set(tokenizer.all_special_ids)
        self.filler = next(i for i in range(self.vocab) if i not in self.special)
        self.labelled, self.seed = labelled, seed
        rng = random.Random(seed)
        self.extra = [rng.randint(*text) for _ in range(count)]
        self.max_length = processor.max_length
        longest = len(self.base_ids) + text[1]
        if longest > self.max_length:
            raise SystemExit(
                f"--text-tokens {text[0]}-{text[1]}: a sample would take {longest} positions, more than "
                f"the sequence limit {self.max_length} (--max-length)"
            )

    def __len__(self) -> int:
        return len(self.extra)

    def shape(self, index: int) -> tuple[int, int, int]:
        """``(positions, labelled positions the LM head runs at, image views)`` of a sample."""
        n = self.extra[index]
        reply = n - round(n * (1 - self.labelled))
        base = sum(1 for label in self.base_labels[1:] if label != IGNORE_INDEX)
        return len(self.base_ids) + n, base + reply, self.pixel_shape[0]

    def __getitem__(self, index: int) -> EncodedSample:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        n = self.extra[index]
        prompt = round(n * (1 - self.labelled))
        ids = [
            i if i not in self.special else self.filler
            for i in torch.randint(0, self.vocab, (n,), generator=gen).tolist()
        ]
        labels = self.base_labels + [IGNORE_INDEX] * prompt + ids[prompt:]
        pixels = torch.randn(self.pixel_shape, generator=gen)
        return EncodedSample(input_ids=self.base_ids + ids, labels=labels, pixel_values=pixels, grids=self.grids)


class CountingCollator:
    """The trainer's collator, counting rows and padded positions (how well batches are packed)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.samples = self.rows = self.positions = self.real = 0

    def __call__(self, samples: list[Any]) -> Any:
        batch = self.inner(samples)
        if batch is not None and "input_ids" in batch:
            kept = [s for s in samples if isinstance(s, EncodedSample)]
            self.samples += len(kept)
            self.real += sum(len(s.input_ids) for s in kept)
            self.rows += int(batch["input_ids"].shape[0])
            self.positions += int(batch["input_ids"].numel())
        return batch

    @property
    def padding_fraction(self) -> float | None:
        return 1 - self.real / self.positions if self.positions else None


# -- composing -------------------------------------------------------------------------------------
class DepthHost:
    """A plugin host whose presets are another's with fewer layers and no weights to load (the
    layer counts edited here, before building; nothing else of the preset changes), and, for an
    LLM whose tokenizer is on the hub, its family's offline tokenizer."""

    def __init__(self, base: Any, *, vit_layers: int | None, llm_layers: int | None, tokenizer: str | None) -> None:
        self.base, self.vit_layers, self.llm_layers, self.tokenizer = base, vit_layers, llm_layers, tokenizer

    def __getattr__(self, name: str) -> Any:
        return getattr(self.base, name)

    @staticmethod
    def _entry(entry: Any, spec: Any) -> Any:
        from ovis.plugin_host import Entry

        return Entry(spec=spec, target=entry.target, plugin=entry.plugin, kind=entry.kind)

    @staticmethod
    def _layers(spec: Any, layers: int | None, what: str) -> dict[str, Any]:
        if layers is None:
            return {}
        arch = dict(spec.architecture)
        if "num_hidden_layers" not in arch:
            raise SystemExit(f"--{what}-layers: preset {spec.name!r} has no architecture.num_hidden_layers to edit")
        if not 0 < layers <= spec.num_layers:
            raise SystemExit(f"--{what}-layers {layers}: preset {spec.name!r} has {spec.num_layers} layers")
        arch["num_hidden_layers"] = layers
        return {"num_layers": layers, "architecture": arch}

    def vision(self, name: str) -> Any:
        entry = self.base.vision(name)
        update = {"weights": None, **self._layers(entry.spec, self.vit_layers, "vit")}
        return self._entry(entry, entry.spec.model_copy(update=update))

    def llm(self, name: str) -> Any:
        entry = self.base.llm(name)
        update = {"weights": None, **self._layers(entry.spec, self.llm_layers, "llm")}
        tokenizer = self.tokenizer or offline_tokenizer(self.base, entry.spec)
        if tokenizer:
            update["tokenizer"] = tokenizer
        return self._entry(entry, entry.spec.model_copy(update=update))


def offline_tokenizer(host: Any, spec: Any) -> str | None:
    """An ``offline:`` tokenizer of the LLM's family when its own is on the hub (None: keep it)."""
    if spec.tokenizer.startswith("offline:") or Path(spec.tokenizer).is_dir():
        return None
    for entry in host.list("llm"):
        if entry.spec.family == spec.family and entry.spec.tokenizer.startswith("offline:"):
            return entry.spec.tokenizer
    raise SystemExit(
        f"LLM {spec.name!r}: tokenizer {spec.tokenizer!r} is on the hub and no offline tokenizer of "
        f"family {spec.family!r} is registered; give --tokenizer DIR"
    )


def compose_random(args: argparse.Namespace, out: Path) -> Path:
    """Compose the model with random weights into ``out``."""
    import ovis
    from ovis.plugin_host import get_host

    host = DepthHost(get_host(), vit_layers=args.vit_layers, llm_layers=args.llm_layers, tokenizer=args.tokenizer)
    device = args.compose_device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    t0 = time.perf_counter()
    try:
        # Random init of billions of parameters takes minutes on a few CPU cores and seconds on a
        # GPU. bf16 on disk halves the write and the read; the trainer loads it in its own dtype.
        with torch.device(device):
            ovis.compose(
                args.vit,
                args.llm,
                visual_vocab_size=args.visual_vocab,
                pretrained=False,
                dtype="bfloat16",
                out=out,
                host=host,
            )
    except Exception as exc:
        if device == "cpu":
            raise
        print(f"composing on {device} failed ({type(exc).__name__}: {exc}); composing on the CPU", flush=True)
        gc.collect()
        with torch.device("cpu"):
            ovis.compose(
                args.vit,
                args.llm,
                visual_vocab_size=args.visual_vocab,
                pretrained=False,
                dtype="bfloat16",
                out=out,
                host=host,
            )
    seconds = time.perf_counter() - t0
    print(f"composed {args.vit} + {args.llm} (random weights, on {device}) in {seconds:.1f} s -> {out}", flush=True)
    return out


def full_depth_flops(args: argparse.Namespace, stage_tokens: list[str], shapes: list[tuple[int, int, int]]) -> float:
    """Model FLOPs of the same samples through the presets at full depth (built on the meta device)."""
    import ovis
    from ovis.plugin_host import get_host
    from ovis.train.modules import token_modules

    host = DepthHost(get_host(), vit_layers=None, llm_layers=None, tokenizer=args.tokenizer)
    model, _ = ovis.compose(args.vit, args.llm, visual_vocab_size=args.visual_vocab, dry_run=True, host=host)
    model.requires_grad_(False)
    for token in stage_tokens:
        for module in token_modules(model, token):
            module.requires_grad_(True)
    plan = flop_plan(model, checkpointing=args.checkpointing == "on")
    return sum(plan.sample_flops(*s)["model"] for s in shapes)


# -- peaks -----------------------------------------------------------------------------------------
def table_peak(device: str, precision: str) -> tuple[float | None, str]:
    if device != "cuda" or precision != "bf16":
        return None, ""
    name = torch.cuda.get_device_name()
    for key, peak in GPU_BF16_PEAKS:
        if key in name:
            return peak, f"{name}: {key} dense bf16 (datasheet)"
    return None, f"{name}: not in the table"


def matmul_rate(device: str, dtype: torch.dtype, seconds: float = 1.0) -> tuple[float, float | None]:
    """FLOP/s of the best run of a large square matmul (2048 on CPU, 8192 on GPU) in ``dtype``, per
    second of wall time and (on the CPU) per second of this process's CPU time."""
    n = 8192 if device == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = best_cpu = 0.0
    deadline = time.perf_counter() + seconds
    runs = 0
    while time.perf_counter() < deadline or runs < 3:
        if device == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        torch.matmul(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        runs += 1
        if runs > 1:  # the first run warms up
            best = max(best, 2.0 * n**3 / dt)
            best_cpu = max(best_cpu, 2.0 * n**3 / dc) if dc > 0 else best_cpu
    return best, (best_cpu or None) if device == "cpu" else None


def cpu_info() -> dict[str, Any]:
    from ovis.precision import cpu_model, cpu_native_bf16

    flags = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_bf16", "amx_tile")
    return {
        "model": cpu_model(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "flags": [f for f in wanted if f in flags],
        "native_bf16": cpu_native_bf16(),
    }


def peak_rss_gib() -> float | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return None


# -- one run ---------------------------------------------------------------------------------------
ZERO = {"none": None, "2": "zero2", "3": "zero3"}


def run_one(args: argparse.Namespace, model_dir: Path) -> dict[str, Any]:
    """Train ``warmup + steps`` steps with the Trainer; the measured figures."""
    from ovis.train import TrainConfig, Trainer
    from ovis.train.config import STAGE_DEFAULTS, DataConfig

    stage_tokens = list(STAGE_DEFAULTS[args.stage]["train_modules"])
    data: dict[str, Any] = {"max_length": args.max_length} if args.max_length else {}
    packing_note = None
    if args.packing == "on":
        if "packing" in DataConfig.model_fields:
            data["packing"] = True
        else:
            packing_note = "this checkout has no data.packing: ran unpacked"
            print(f"packing: {packing_note}", flush=True)
    output = Path(tempfile.mkdtemp(prefix="run-", dir=args.work))
    config = TrainConfig(
        stage=args.stage,
        model=model_dir,
        output_dir=output,
        data=DataConfig(**data),
        max_steps=args.warmup + args.steps,
        per_device_batch_size=args.batch,
        gradient_accumulation_steps=args.accumulation,
        precision=args.resolved_precision,
        gradient_checkpointing=args.checkpointing == "on",
        deepspeed=ZERO[args.zero],
        lr=1e-5,
        warmup_ratio=0.0,
        save_steps=10**9,
        logging_steps=1,
        seed=args.seed,
    )

    class BenchTrainer(Trainer):
        def save(self) -> Path:  # steps are timed, not checkpoint writes
            return self.output_dir

    # Enough samples for every step on every rank, so the data order never wraps.
    world = int(os.environ.get("WORLD_SIZE", "1"))
    count = (args.warmup + args.steps) * args.batch * args.accumulation * world + args.batch
    processor = OvisProcessor.from_pretrained(model_dir)
    if args.max_length:
        processor.max_length = args.max_length  # as the trainer's own copy (data.max_length)
    vocab = json.loads((model_dir / "config.json").read_text())["llm_config"]["vocab_size"]
    dataset = SyntheticSamples(processor, count, parse_lengths(args.text_tokens), args.labelled, vocab, args.seed)
    records: list[dict[str, Any]] = []
    cpu_clock: list[float] = []  # this process's CPU time at the end of each step

    def on_step_end(step: int, record: dict[str, Any]) -> None:
        records.append(record)
        cpu_clock.append(time.process_time())

    trainer = BenchTrainer(config, dataset=dataset, progress=False, on_step_end=on_step_end)
    t0 = time.perf_counter()
    trainer.setup()
    setup_s = time.perf_counter() - t0
    counter = CountingCollator(trainer.collator)
    trainer.collator = counter
    plan = flop_plan(trainer.model, checkpointing=args.checkpointing == "on")
    device = trainer.engine.device.type
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    cpu_clock.append(time.process_time())  # [0]: before step 1; [k]: after step k
    trainer.fit()
    world = trainer.processes.world_size
    measured = records[args.warmup :]
    # On a shared CPU the wall time moves with other jobs' load; the CPU time this process spent
    # moves much less (with one thread it is close to the work itself).
    cpu_seconds = cpu_clock[-1] - cpu_clock[args.warmup]
    shapes = [dataset.shape(i) for r in measured for i in r["sample_ids"]]
    seconds = sum(r["step_time"] for r in measured)
    samples = sum(r["samples"] for r in measured)
    per_sample = [plan.sample_flops(*s) for s in shapes]
    model_flops = sum(f["model"] for f in per_sample)
    recompute = sum(f["recompute"] for f in per_sample)
    positions = sum(s[0] for s in shapes)
    labelled = sum(s[1] for s in shapes)
    packed = counter.rows < counter.samples
    summary = trainer.summary
    result = {
        "device": device,
        "world_size": world,
        "precision": trainer.precision,
        "zero_stage": trainer.zero_stage,
        "engine": trainer.engine.kind,
        "checkpointing": args.checkpointing == "on",
        "packing_asked": args.packing == "on",
        "packing_effective": packed,
        "packing_note": packing_note,
        "stage": args.stage,
        "train_modules": stage_tokens,
        "batch": args.batch,
        "accumulation": args.accumulation,
        "text_tokens": args.text_tokens,
        "steps": len(measured),
        "warmup": args.warmup,
        "setup_s": setup_s,
        "step_times": [r["step_time"] for r in measured],
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "model_flops": model_flops / world,
        "samples_per_cpu_s": samples / cpu_seconds if cpu_seconds > 0 else None,
        "samples_per_s": samples / seconds / world,
        "tokens_per_s": positions / seconds / world,
        "labelled_tokens_per_s": labelled / seconds / world,
        "mean_positions": positions / max(1, len(shapes)),
        "padding_fraction": counter.padding_fraction,
        "rows_per_sample": counter.rows / counter.samples if counter.samples else None,
        "model_flops_per_sample": model_flops / max(1, len(shapes)),
        "model_flops_per_s": model_flops / seconds / world,
        "hardware_flops_per_s": (model_flops + recompute) / seconds / world,
        "params": {
            "trainable": summary.num_trainable,
            "total": sum(summary.total.values()),
            "by_part": summary.to_dict(),
        },
        "flop_plan": plan.summary(),
        "peak_memory_gib": (torch.cuda.max_memory_allocated() / 2**30) if device == "cuda" else peak_rss_gib(),
        "losses": [r["loss"] for r in records],
    }
    if args.full_depth and (args.llm_layers or args.vit_layers):
        result["full_depth_flops_per_sample"] = full_depth_flops(args, stage_tokens, shapes) / max(1, len(shapes))
    return result


# -- reporting -------------------------------------------------------------------------------------
def add_mfu(result: dict[str, Any], peak: dict[str, Any]) -> None:
    best = peak.get("table") or peak.get("measured")
    result["peak_flops"] = best
    result["peak_source"] = "table" if peak.get("table") else "measured matmul"
    result["mfu"] = result["model_flops_per_s"] / best if best else None
    result["hfu"] = result["hardware_flops_per_s"] / best if best else None
    if peak.get("measured"):
        result["mfu_vs_measured_matmul"] = result["model_flops_per_s"] / peak["measured"]
    if peak.get("measured_per_cpu_s") and result.get("cpu_seconds"):
        # Both sides per second of this process's CPU time: other jobs on the machine move it little.
        result["mfu_cpu_time"] = result["model_flops"] / result["cpu_seconds"] / peak["measured_per_cpu_s"]
    if result.get("full_depth_flops_per_sample") and result["mfu"]:
        # What the same MFU would give at full depth on this device.
        result["projected_full_depth_samples_per_s"] = result["mfu"] * best / result["full_depth_flops_per_sample"]


def label(r: dict[str, Any]) -> str:
    packing = "pack" if r["packing_effective"] else ("pack?" if r["packing_asked"] else "")
    return " ".join(
        x
        for x in (
            f"zero{r['zero_stage']}" if r["engine"] == "deepspeed" else "torch",
            "ckpt" if r["checkpointing"] else "",
            packing,
        )
        if x
    )


def print_table(results: list[dict[str, Any]]) -> None:
    head = (
        f"{'config':<20} {'samples/s':>10} {'tokens/s':>10} {'TFLOP/s':>9} {'MFU':>7} {'HFU':>7} "
        f"{'pad':>6} {'step s':>8} {'mem GiB':>8} {'MFU (CPU time)':>15}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        pad = f"{r['padding_fraction']:.0%}" if r.get("padding_fraction") is not None else "-"
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "-"
        hfu = f"{r['hfu']:.1%}" if r.get("hfu") is not None else "-"
        mem = f"{r['peak_memory_gib']:.1f}" if r.get("peak_memory_gib") is not None else "-"
        step = statistics.median(r["step_times"]) if r["step_times"] else float("nan")
        per_cpu = f"{r['mfu_cpu_time']:.1%}" if r.get("mfu_cpu_time") else "-"
        print(
            f"{label(r):<20} {r['samples_per_s']:>10.3f} {r['tokens_per_s']:>10.1f} "
            f"{r['model_flops_per_s'] / 1e12:>9.3f} {mfu:>7} {hfu:>7} {pad:>6} {step:>8.2f} {mem:>8} {per_cpu:>15}"
        )
    if len(results) > 1 and results[0]["samples_per_s"]:
        base = results[0]
        for key, what in (("samples_per_s", "samples/s"), ("samples_per_cpu_s", "samples per CPU-second")):
            if all(r.get(key) for r in results):
                ratios = ", ".join(f"{label(r)} {r[key] / base[key]:.2f}x" for r in results)
                print(f"{what} relative to the first row: {ratios}")


def print_anchor(results: list[dict[str, Any]], text_tokens: int) -> list[dict[str, float]]:
    anchors = [llava_anchor(t) for t in sorted({150, text_tokens, 600})]
    print(
        "\nThe LLaVA-1.5 anchor: LLaVA-1.5-13B fine-tuning, 665K samples in ~20 h on 8 A100-80G "
        f"({anchors[0]['samples_per_s_per_gpu']:.2f} samples/s per GPU), as MFU of 312 TFLOP/s bf16:"
    )
    for a in anchors:
        mark = " (assumed)" if a["text_tokens"] == text_tokens else ""
        print(
            f"  {a['text_tokens']:>4} text tokens/sample{mark}: {a['flops_per_sample'] / 1e12:.1f} TFLOP/sample, "
            f"MFU {a['mfu']:.1%}"
        )
    main = next(a for a in anchors if a["text_tokens"] == text_tokens)
    for r in results:
        if r.get("mfu") is None:
            continue
        line = (
            f"  measured {label(r)} on {r['device']}: MFU {r['mfu']:.1%} = {r['mfu'] / main['mfu']:.2f}x the anchor's"
        )
        if r.get("projected_full_depth_samples_per_s") is not None:
            line += f"; at full depth and this MFU: {r['projected_full_depth_samples_per_s']:.3g} samples/s here"
            if r["device"] == "cuda":  # a GPU's MFU carries to another GPU; a CPU's does not
                line += f", {r['mfu'] * A100_BF16 / r['full_depth_flops_per_sample']:.2f} on an A100"
        print(line)
    return anchors


# -- main ------------------------------------------------------------------------------------------
def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--toy", action="store_true", help="clip-toy + qwen-toy, V 1024, 16-160 text tokens")
    p.add_argument("--vit", default="clip", help="vision preset (default: clip, ViT-L/14-336)")
    p.add_argument("--llm", default="llama3-8b", help="LLM preset (default: llama3-8b)")
    p.add_argument("--visual-vocab", type=int, default=131072, help="visual vocabulary size V")
    p.add_argument("--llm-layers", type=int, default=None, help="LLM depth (default: the preset's)")
    p.add_argument("--vit-layers", type=int, default=None, help="ViT depth (default: the preset's)")
    p.add_argument("--tokenizer", default=None, help="tokenizer to compose with (default: the family's offline one)")
    p.add_argument("--stage", type=int, choices=(1, 2, 3), default=3, help="sets train_modules as the stage configs")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto")
    p.add_argument("--zero", choices=tuple(ZERO), default="2", help="DeepSpeed ZeRO stage, or none (PyTorch loop)")
    p.add_argument("--checkpointing", choices=("on", "off"), default="off", help="gradient checkpointing")
    p.add_argument("--packing", choices=("on", "off"), default="off", help="data.packing")
    p.add_argument("--batch", type=int, default=4, help="per-device micro-batch")
    p.add_argument("--accumulation", type=int, default=1)
    p.add_argument("--text-tokens", default="256", help="extra text tokens per sample: N or LOW-HIGH (uniform)")
    p.add_argument("--labelled", type=float, default=0.5, help="fraction of the extra text that is labelled")
    p.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="data.max_length, the packed row length (default: the model's processor's)",
    )
    p.add_argument("--steps", type=int, default=5, help="measured steps")
    p.add_argument("--warmup", type=int, default=2, help="steps left out first")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--sweep",
        action="store_true",
        help="zero 2/3 x checkpointing off/on x packing off/on, each in its own process, side by side",
    )
    p.add_argument(
        "--full-depth",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="at reduced depth, also count the full-depth model's FLOPs (meta device) and project",
    )
    p.add_argument("--anchor-text-tokens", type=int, default=300)
    p.add_argument("--work", type=Path, default=None, help="where models are composed and runs written")
    p.add_argument("--model-dir", type=Path, default=None, help="a composed model to use as is")
    p.add_argument(
        "--compose-device",
        default="auto",
        help="where to initialise the random weights (auto: cuda when there is one, falling back to cpu)",
    )
    p.add_argument("--peak", type=float, default=None, help="peak FLOP/s to use (skips the matmul probe)")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--result-only", action="store_true", help=argparse.SUPPRESS)  # a sweep's child
    p.add_argument("--compose-only", action="store_true", help=argparse.SUPPRESS)  # compose in a child
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.toy:
        for key, value in TOY.items():
            if p.get_default(key) == getattr(args, key):
                setattr(args, key, value)
    if args.work is None:
        args.work = Path(tempfile.gettempdir()) / "ovis-train-throughput"
    args.work.mkdir(parents=True, exist_ok=True)
    return args


def composition_dir(args: argparse.Namespace) -> Path:
    key = json.dumps([args.vit, args.llm, args.visual_vocab, args.llm_layers, args.vit_layers, args.tokenizer])
    name = f"{args.vit}+{args.llm}-V{args.visual_vocab}-L{args.llm_layers or 'full'}-ViT{args.vit_layers or 'full'}"
    return args.work / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def measure_peak(device: str, precision: str) -> dict[str, Any]:
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    table, note = table_peak(device, precision)
    measured, per_cpu_s = matmul_rate(device, dtype)
    return {
        "table": table,
        "table_note": note,
        "measured": measured,
        "measured_per_cpu_s": per_cpu_s,
        "dtype": str(dtype),
    }


def resolved(args: argparse.Namespace) -> tuple[str, str]:
    from ovis.precision import resolve_precision

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return device, resolve_precision(args.precision, device).precision


def sweep(args: argparse.Namespace, model_dir: Path, peak: float, precision: str) -> list[dict[str, Any]]:
    """Each configuration in its own process (a clean peak memory; one failing does not stop the rest)."""
    results = []
    script = str(Path(__file__).resolve())
    for zero in ("2", "3"):
        for ckpt in ("off", "on"):
            for packing in ("off", "on"):
                out = args.work / f"sweep-z{zero}-{ckpt}-{packing}.json"
                argv = [a for a in args.argv if a != "--sweep"]
                cmd = [
                    sys.executable,
                    script,
                    *_without(
                        argv,
                        ("--zero", "--checkpointing", "--packing", "--json", "--model-dir", "--peak", "--precision"),
                    ),
                    "--zero",
                    zero,
                    "--checkpointing",
                    ckpt,
                    "--packing",
                    packing,
                    "--model-dir",
                    str(model_dir),
                    "--precision",
                    precision,
                    "--peak",
                    repr(peak),
                    "--json",
                    str(out),
                    "--result-only",
                    "--no-full-depth",
                ]
                print(f"--- zero {zero}, checkpointing {ckpt}, packing {packing}", flush=True)
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    print(f"    FAILED (rc {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
                    continue
                results.extend(json.loads(out.read_text())["results"])
    return results


def _without(argv: list[str], options: tuple[str, ...]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in options:
            skip = True
            continue
        if any(a.startswith(o + "=") for o in options):
            continue
        out.append(a)
    return out


def composed(args: argparse.Namespace) -> Path:
    """The model directory: given, already composed, or composed now in a child process (so that
    composing's memory is neither held nor counted in this process's peak)."""
    if args.model_dir:
        return args.model_dir
    out = composition_dir(args)
    if not (out / "config.json").is_file():
        cmd = [sys.executable, str(Path(__file__).resolve()), *args.argv, "--compose-only"]
        if subprocess.run(cmd).returncode != 0:
            raise SystemExit(f"composing {args.vit} + {args.llm} failed (see above)")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.compose_only:
        compose_random(args, composition_dir(args))
        return 0
    device, precision = resolved(args)
    args.resolved_precision = precision  # the trainer gets it resolved: one probe, one answer
    if device == "cpu":
        print(f"CPU: {json.dumps(cpu_info())}", flush=True)
    else:
        memory = torch.cuda.get_device_properties(0).total_memory / 2**30
        print(f"GPU: {torch.cuda.get_device_name()} ({memory:.0f} GiB), torch {torch.__version__}", flush=True)
    model_dir = composed(args)
    if args.peak:
        peak: dict[str, Any] = {"measured": args.peak, "dtype": precision}
        peak["table"], peak["table_note"] = table_peak(device, precision)
    else:
        peak = measure_peak(device, precision)
    if args.sweep:
        results = sweep(args, model_dir, peak["measured"], precision)
    else:
        results = [run_one(args, model_dir)]
    if not args.peak:  # probe again after the run and keep the better: the machine may be shared
        again = measure_peak(device, precision)
        peak["measured_before_after"] = [peak["measured"], again["measured"]]
        peak["measured"] = max(peak["measured"], again["measured"])
        if again["measured_per_cpu_s"]:
            peak["measured_per_cpu_s_before_after"] = [peak["measured_per_cpu_s"], again["measured_per_cpu_s"]]
            peak["measured_per_cpu_s"] = max(peak["measured_per_cpu_s"] or 0.0, again["measured_per_cpu_s"])
    for r in results:
        add_mfu(r, peak)
    report = {
        "composition": {
            "vit": args.vit,
            "llm": args.llm,
            "visual_vocab": args.visual_vocab,
            "llm_layers": args.llm_layers,
            "vit_layers": args.vit_layers,
        },
        "peak": peak,
        "machine": cpu_info() if device == "cpu" else {"gpu": torch.cuda.get_device_name(), "cpu": cpu_info()},
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python benchmarks/train_throughput.py " + " ".join(args.argv),
        "results": results,
    }
    if not args.result_only:
        best = peak.get("table") or peak["measured"]
        source = f"table: {peak['table_note']}" if peak.get("table") else f"measured {precision} matmul"
        print(
            f"\n{args.vit} + {args.llm}, V {args.visual_vocab}, LLM layers {args.llm_layers or 'all'}, "
            f"ViT layers {args.vit_layers or 'all'}; stage {args.stage}, {precision}, batch {args.batch}, "
            f"text tokens {args.text_tokens}; peak {best / 1e12:.3g} TFLOP/s ({source})"
        )
        print_table(results)
        report["llava_anchor"] = print_anchor(results, args.anchor_text_tokens)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))
        if not args.result_only:
            print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
