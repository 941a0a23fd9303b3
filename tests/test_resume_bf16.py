"""Resuming a ``precision: bf16`` run: stopped after its step-3 checkpoint and resumed, it trains as
the run that was never interrupted, on the PyTorch engine (fp32 weights, bf16 autocast) and on
DeepSpeed ZeRO-2 (bf16 weights, fp32 master copies in the optimizer).

The tolerance is none on a CPU: each engine restores the state it computes from whole (fp32
weights, or DeepSpeed's fp32 masters; Adam moments; schedule; RNG), and CPU kernels are
deterministic, so the resumed steps repeat the same bf16 roundings bit for bit. The controls show
what the equality catches: a resume whose weights come back rounded to bf16 (the fp32 state lost)
trains differently within three steps, on either engine."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from ovis.train import checkpoint as ckpt
from ovis.train.deepspeed_config import builtin_deepspeed_config
from ovis.train.engines import ENGINE_TAG, TORCH_STATE
from tests.test_train import _compose, _config, _run, _weights


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> tuple[Path, Path]:
    """clip-toy + qwen-toy, and 8 synthetic scenes (3 questions each)."""
    from ovis.data.synth import SynthSpec, write_synthetic_dataset

    root = tmp_path_factory.mktemp("bf16")
    info = write_synthetic_dataset(root / "data", SynthSpec(train_images=8, eval_images=1), progress=False)
    return _compose(root / "model"), Path(info)


def _bf16_config(toy: tuple[Path, Path], out: Path, engine: str | None):
    model, info = toy
    return _config(
        model,
        info,
        out,
        data={"dataset_info": info, "datasets": ["synth-conversations"]},
        precision="bf16",
        deepspeed=engine,
        per_device_batch_size=2,
        gradient_accumulation_steps=2,
        max_steps=6,
        save_steps=3,
    )


def _stopped_after_step_3(reference: Path, out: Path) -> None:
    """``out`` as a run left it that stopped after its step-3 checkpoint."""
    (out / "checkpoints").mkdir(parents=True)
    shutil.copytree(reference / "checkpoints" / "step-3", out / "checkpoints" / "step-3")


def _losses(trainer) -> list[float]:
    return [r["loss"] for r in trainer.records]


@pytest.mark.skipif(torch.cuda.is_available(), reason="bit-exact repetition is asked of the CPU's kernels only")
@pytest.mark.parametrize("engine", [None, "zero2"], ids=["pytorch", "zero2"])
def test_a_bf16_run_resumed_trains_as_the_uninterrupted_run(engine, toy, tmp_path, one_thread):
    config = _bf16_config(toy, tmp_path / "a", engine)
    reference = _run(config)
    assert reference.precision == "bf16"
    _stopped_after_step_3(tmp_path / "a", tmp_path / "b")
    resumed = _run(config.model_copy(update={"output_dir": tmp_path / "b"}), resume=True)
    assert [r["step"] for r in resumed.records] == [4, 5, 6]
    assert [r["sample_ids"] for r in resumed.records] == [r["sample_ids"] for r in reference.records[3:]]
    assert _losses(resumed) == _losses(reference)[3:]  # exactly: see the module docstring
    assert [r["grad_norm"] for r in resumed.records] == [r["grad_norm"] for r in reference.records[3:]]
    a, b = _weights(tmp_path / "a" / "final"), _weights(tmp_path / "b" / "final")
    assert a.keys() == b.keys() and {v.dtype for v in b.values()} == {torch.bfloat16}
    assert [k for k in a if not torch.equal(a[k], b[k])] == []

    # The control: the same resume with the fp32 weights rounded to bf16 on the way.
    _stopped_after_step_3(tmp_path / "a", tmp_path / "c")
    control = config.model_copy(update={"output_dir": tmp_path / "c"})
    if engine is None:  # the checkpoint's fp32 module weights, rounded
        path = tmp_path / "c" / "checkpoints" / "step-3"
        state = torch.load(path / ENGINE_TAG / TORCH_STATE, weights_only=True)
        assert {v.dtype for v in state["module"].values() if v.is_floating_point()} == {torch.float32}
        state["module"] = {k: v.to(torch.bfloat16).to(v.dtype) for k, v in state["module"].items()}
        torch.save(state, path / ENGINE_TAG / TORCH_STATE)
        ckpt.write_manifest(path)
    else:  # DeepSpeed's fp32 masters taken from the bf16 module weights instead of the optimizer state
        ds = builtin_deepspeed_config("zero2")
        ds["zero_optimization"]["load_from_fp32_weights"] = False
        (tmp_path / "ds.json").write_text(json.dumps(ds))
        control = control.model_copy(update={"deepspeed": str(tmp_path / "ds.json")})
    rounded = _run(control, resume=True)
    assert [r["sample_ids"] for r in rounded.records] == [r["sample_ids"] for r in reference.records[3:]]
    assert _losses(rounded)[0] == pytest.approx(_losses(reference)[3], rel=1e-2)  # the same model, near
    # measured: 8e-4 apart at step 4 (PyTorch), 2e-3 by step 6 (ZeRO-2, whose step 4 runs on the
    # same bf16 weights): far beyond the exact equality asked above
    assert max(abs(x - y) for x, y in zip(_losses(rounded), _losses(reference)[3:], strict=True)) > 1e-4
