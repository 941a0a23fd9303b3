"""benchmarks/tiled_visual_path.py runs in its smallest setting and measures what the model runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "tiled_visual_path.py"


@pytest.mark.slow
def test_tiled_visual_path_benchmark_smallest_setting(tmp_path):
    out = tmp_path / "tiled.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--images",
            "1",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--threads",
            "1",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The script first checks that its two functions are encode_images' own for both visual_path values.
    assert "the measured paths are encode_images' own" in proc.stdout
    raw = json.loads(out.read_text())
    # aimv2-tiny: 64 px / patch 16 = a 4 x 4 grid, merged 2 x 2 -> 4 tokens per view; a 3 x 3 grid
    # has 9 tiles + 1 global view; the block adds BEGIN, GRID, END, 2 COL per row (6), 2 ROW: 11.
    assert raw["tokens_per_view"] == 4
    assert raw["visual_tokens_per_image"] == 40
    assert raw["positions_per_image"] == 40 + 11
    assert raw["words"] == 8192 - 5
    for mode in ("forward", "backward"):
        result = raw[mode]
        assert result["relative_error"] < 1e-5, (mode, result["relative_error"])
        assert result["naive"]["times"] and result["lean"]["times"]
        assert all(t > 0 for t in result["naive"]["times"] + result["lean"]["times"])
        assert result["vit"]["views"] == 10
        ratios = result["ratios"]
        assert ratios["head_speedup"] > 0 and ratios["visual_path_speedup"] > 0
    assert "lean / naive" in proc.stdout


def test_tiled_visual_path_benchmark_refuses_a_path_that_is_not_the_models(tmp_path, monkeypatch):
    """The model check fails when the benchmark's naive function drifts from encode_images'."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import tiled_visual_path as bench
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))

    original = bench.naive_path

    def drifted(tokenizer, vte, features):
        return original(tokenizer, vte, features) * 1.001

    monkeypatch.setitem(bench.PATHS, "naive", drifted)
    with pytest.raises(SystemExit, match="naive path is not what encode_images computes"):
        bench.build_tiny(512, "cpu", bench.DTYPES["float32"])
