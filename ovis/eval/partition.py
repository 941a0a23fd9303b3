"""How many tiles ``ovis eval`` lets each image take on a tiled model: VLMEvalKit's Ovis2 defaults.

VLMEvalKit's Ovis2 wrapper picks ``max_partition`` per question: 1 for video frames, 12 on the
OCR-heavy benchmarks (TextVQA, ChartQA, DocVQA, InfoVQA, OCRBench: matched by the benchmark's name,
``DocVQA_VAL`` included), ``12 // n`` (at least 1) for a question with n > 1 images, else 9.
``--max-partition N`` replaces the rule with N for every image (video frames stay at 1). A v1-layout
model has no tiles: nothing is chosen and nothing enters the fingerprint.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ovis.model.ovis2_format import is_hf_ovis2_checkpoint
from ovis.model.ovis2_release_format import is_release_checkpoint

DEFAULT_PARTITION = 9
OCR_PARTITION = 12
#: the OCR-heavy benchmarks VLMEvalKit's Ovis2 wrapper gives 12 tiles
OCR_BENCHMARKS = ("TextVQA", "ChartQA", "DocVQA", "InfoVQA", "OCRBench")


def is_ocr_benchmark(name: str) -> bool:
    """Whether a benchmark's name starts with one of :data:`OCR_BENCHMARKS` (case and ``_``/``-`` aside)."""
    squashed = re.sub(r"[^a-z0-9]", "", name.lower())
    return any(squashed.startswith(bench.lower()) for bench in OCR_BENCHMARKS)


def partition_setting(benchmark: str, override: int | None = None) -> dict[str, Any]:
    """What the fingerprint records for a benchmark on a tiled model: the rule and its base value."""
    if override is not None:
        return {"rule": "fixed", "max_partition": override}
    base = OCR_PARTITION if is_ocr_benchmark(benchmark) else DEFAULT_PARTITION
    return {"rule": "vlmevalkit-ovis2", "max_partition": base}


def video_partition_setting() -> dict[str, Any]:
    """What the fingerprint records for a video benchmark on a tiled model: every frame one tile,
    whatever ``--max-partition`` says (as VLMEvalKit's Ovis2 wrapper does for video)."""
    return {"rule": "video-frames", "max_partition": 1}


def item_partition(setting: dict[str, Any], num_images: int, *, video: bool = False) -> int:
    """The ``max_partition`` for one question under ``setting`` (see :func:`partition_setting`)."""
    if video:
        return 1
    if setting["rule"] == "fixed" or setting["max_partition"] == OCR_PARTITION or num_images <= 1:
        return setting["max_partition"]
    return max(1, OCR_PARTITION // num_images)


def is_tiled_model(model_path: str | Path) -> bool:
    """Whether the model directory holds a tiled-layout model, read from its ``config.json`` alone (before
    the model loads): ovis's ``image_layout``, or an Ovis2 checkpoint (hf-ovis2 or the release)."""
    path = Path(model_path).expanduser()
    if is_hf_ovis2_checkpoint(path) or is_release_checkpoint(path):
        return True
    try:
        return json.loads((path / "config.json").read_text()).get("image_layout") == "tiled"
    except (OSError, ValueError, AttributeError):
        return False
