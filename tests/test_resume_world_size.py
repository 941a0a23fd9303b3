"""Resuming a run on another number of ranks: where the data continues (``schedule.resume_at``),
what is refused, and DeepSpeed runs written by 2 ranks continued by 1 (and by 1 continued by 2)
against an uninterrupted run with the same global batch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import ovis
from ovis.errors import ConfigError
from ovis.train import TrainConfig, Trainer
from ovis.train import checkpoint as ckpt
from ovis.train.schedule import DataOrder, resume_at
from tests.test_train import _env

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


# -- where the data continues ---------------------------------------------------------------------
def _read(order: DataOrder, epoch: int, first: int, last: int | None = None) -> list[int]:
    """Every rank's samples of micro-batches ``first:last`` of ``epoch``, micro-batch by micro-batch."""
    per_rank = [order.batches(epoch, rank)[first:last] for rank in range(order.world_size)]
    return [i for index in range(len(per_rank[0])) for rank in per_rank for i in rank[index]]


# (samples, (batch, ranks, accumulation) writing, (batch, ranks, accumulation) resuming)
LAYOUTS = [
    (8, (1, 2, 1), (1, 1, 2)),  # 2 -> 1 ranks, accumulation doubled
    (54, (4, 2, 1), (4, 1, 2)),
    (50, (2, 4, 2), (2, 2, 4)),  # 4 -> 2 ranks; the last micro-batches of an epoch are short
    (53, (2, 4, 2), (4, 1, 4)),  # 4 -> 1 with a larger per-rank batch; 4 ranks pad the epoch by 3
    (21, (1, 1, 2), (1, 2, 1)),  # 1 -> 2 ranks; 2 ranks pad the epoch by 1
    (40, (2, 2, 3), (3, 2, 2)),  # same ranks, another per-rank batch
]


@pytest.mark.parametrize(("num_samples", "before", "after"), LAYOUTS)
def test_resume_on_another_layout_reads_the_rest_of_the_epoch_once(num_samples, before, after):
    (b, w, a), (b2, w2, a2) = before, after
    old = DataOrder(num_samples, batch_size=b, world_size=w, seed=7, accumulation=a)
    new = DataOrder(num_samples, batch_size=b2, world_size=w2, seed=7, accumulation=a2)
    assert old.global_batch == new.global_batch
    checked = 0
    for step in range(1, 3 * old.total_steps(1, a)):
        micro = step * a
        epoch, index = old.locate(micro)
        read = index * b * w
        if read % (b2 * w2):  # inside one of the new layout's micro-batches: refused (tested below)
            continue
        resumed = resume_at(old.fingerprint(), micro, new)
        new_epoch, new_index = new.locate(resumed)
        assert new_epoch == epoch
        seen, rest = _read(old, epoch, 0, index), _read(new, epoch, new_index)
        # What was read is the start of the epoch's order, in either layout, with no sample twice;
        # what follows is the rest of what an uninterrupted run on the new layout reads this epoch.
        assert sorted(seen) == sorted(new.permutation(epoch)[:read]) and len(set(seen)) == len(seen)
        assert Counter(seen + rest) == Counter(new.permutation(epoch))
        assert set(seen + rest) == set(range(num_samples))
        # The next step reads the samples the interrupted run's next step would have read.
        if (index + a) * b * w <= num_samples:
            assert sorted(_read(new, epoch, new_index, new_index + a2)) == sorted(_read(old, epoch, index, index + a))
        checked += 1
    assert checked >= 3


def test_the_same_layout_continues_at_the_saved_micro_batch():
    order = DataOrder(10, batch_size=2, world_size=2, seed=3, accumulation=2)
    assert resume_at(order.fingerprint(), 5, order) == 5
    # another accumulation on the same layout is allowed, as it always was
    other = DataOrder(10, batch_size=2, world_size=2, seed=3, accumulation=1)
    assert resume_at(order.fingerprint(), 5, other) == 5


def test_resumes_that_cannot_continue_exactly_are_refused_with_the_numbers():
    two = DataOrder(54, batch_size=2, world_size=2, seed=0, accumulation=2)
    one = DataOrder(54, batch_size=2, world_size=1, seed=0, accumulation=2)
    with pytest.raises(
        ConfigError,
        match=r"global batch would change from 8 \(2 per device x 2 accumulation x 2 ranks\) "
        r"to 4 \(2 x 2 x 1\).*set gradient_accumulation_steps: 4",
    ):
        resume_at(two.fingerprint(), 4, one)
    odd = DataOrder(54, batch_size=3, world_size=1, seed=0, accumulation=2)
    with pytest.raises(ConfigError, match="no gradient_accumulation_steps gives it with per_device_batch_size 3"):
        resume_at(two.fingerprint(), 4, odd)
    legacy = {k: v for k, v in two.fingerprint().items() if k != "accumulation"}  # before ovis recorded it
    with pytest.raises(ConfigError, match="did not record its gradient_accumulation_steps.*resume it on 2 ranks"):
        resume_at(legacy, 4, DataOrder(54, batch_size=2, world_size=1, seed=0, accumulation=4))
    assert resume_at(legacy, 4, DataOrder(54, batch_size=2, world_size=2, seed=0, accumulation=1)) == 4
    with pytest.raises(ConfigError, match="seed 0 in the checkpoint, 1 now"):
        resume_at(two.fingerprint(), 4, DataOrder(54, batch_size=2, world_size=2, seed=1, accumulation=2))
    with pytest.raises(ConfigError, match="num_samples 54 in the checkpoint, 53 now"):
        resume_at(two.fingerprint(), 4, DataOrder(53, batch_size=2, world_size=2, seed=0, accumulation=2))
    # 1 rank, 5 samples, 2 micro-batches a step: step 3 ends after the first sample of epoch 1,
    # inside a 2-rank micro-batch
    alone = DataOrder(5, batch_size=1, world_size=1, seed=0, accumulation=2)
    pair = DataOrder(5, batch_size=1, world_size=2, seed=0, accumulation=1)
    with pytest.raises(
        ConfigError,
        match="stopped after sample 1 of epoch 1's order, inside one of this layout's micro-batches of 2 samples",
    ):
        resume_at(alone.fingerprint(), 6, pair)
    assert resume_at(alone.fingerprint(), 4, pair) == 2  # step 2 ends on a boundary of both


# -- DeepSpeed runs: 2 ranks -> 1 and 1 -> 2 -----------------------------------------------------
STEPS, SAVE = 6, 3


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> tuple[Path, Path]:
    """clip-toy + qwen-toy, and 8 synthetic conversations (one epoch: 4 steps of 2 samples)."""
    from ovis.data.synth import SynthSpec, write_synthetic_dataset

    root = tmp_path_factory.mktemp("toy")
    torch.manual_seed(0)
    ovis.compose(vit="clip-toy", llm="qwen-toy", visual_vocab_size=256, out=root / "model")
    info = write_synthetic_dataset(root / "data", SynthSpec(train_images=8, eval_images=1), progress=False)
    return root / "model", Path(info)


def _fields(toy: tuple[Path, Path], out: Path, **fields) -> dict:
    model, info = toy
    # One sample per rank and micro-batch: the 2-rank and 1-rank runs then average the same
    # per-sample losses (with 2 samples in a micro-batch its token-mean would weigh them differently).
    return {
        "stage": 3,
        "model": str(model),
        "output_dir": str(out),
        "data": {"dataset_info": str(info), "datasets": ["synth-conversations"]},
        "per_device_batch_size": 1,
        "lr": 3e-3,
        "max_steps": STEPS,
        "save_steps": SAVE,
        "logging_steps": 1,
        "seed": 0,
        "precision": "fp32",
        "deepspeed": "zero2",
        **fields,
    }


def _in_process(toy, out: Path, *, resume: bool = False, **fields) -> Trainer:
    torch.set_num_threads(1)
    trainer = Trainer(TrainConfig.model_validate(_fields(toy, out, **fields)), resume=resume, progress=False)
    trainer.run()
    return trainer


def _two_ranks(toy, tmp_path: Path, out: Path, *extra: str, **fields) -> None:
    _ranks(2, toy, tmp_path, out, *extra, **fields)


def _ranks(count: int, toy, tmp_path: Path, out: Path, *extra: str, **fields) -> None:
    """``ovis train`` on ``count`` gloo ranks under torchrun, in fresh processes."""
    config = tmp_path / f"{out.name}.yaml"
    config.write_text(yaml.safe_dump(_fields(toy, out, **fields)))
    command = [
        str(VENV_BIN / "torchrun"),
        "--nproc_per_node",
        str(count),
        "-m",
        "ovis",
        "train",
        "--no-progress",
        "--config",
        str(config),
        *extra,
    ]
    proc = subprocess.run(command, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(command)} exited {proc.returncode}:\n{proc.stderr[-4000:]}"


def _steps(out: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def _copy_checkpoint(source: Path, out: Path, step: int) -> None:
    (out / "checkpoints").mkdir(parents=True)
    shutil.copytree(source / "checkpoints" / f"step-{step}", out / "checkpoints" / f"step-{step}")


def _assert_same_run(ours: dict[int, dict], theirs: dict[int, dict], steps: range) -> None:
    for step in steps:
        assert sorted(ours[step]["sample_ids"]) == sorted(theirs[step]["sample_ids"]), step
        # gloo's 2-rank sum and one rank's accumulation add in another order: fp32 rounding only
        assert ours[step]["loss"] == pytest.approx(theirs[step]["loss"], rel=1e-4), step
        assert ours[step]["lr"] == pytest.approx(theirs[step]["lr"], rel=1e-6), step


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "final" / "model.safetensors")), load_file(str(b / "final" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for key in wa:  # Adam divides by sqrt(v): 1e-7 apart in a gradient can become 1e-5 apart in a weight
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-3, atol=1e-4)


@pytest.fixture(scope="module")
def reference(toy, tmp_path_factory) -> tuple[Path, dict[int, dict]]:
    """One rank, 2 micro-batches a step (global batch 2), never interrupted."""
    out = tmp_path_factory.mktemp("reference") / "run"
    _in_process(toy, out, gradient_accumulation_steps=2)
    return out, _steps(out)


@pytest.mark.slow
@pytest.mark.skipif(not (VENV_BIN / "torchrun").exists(), reason="torchrun not installed")
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_two_ranks_resumed_on_one_match_an_uninterrupted_run(stage, toy, reference, tmp_path):
    ref_dir, ref = reference  # ZeRO-2 (ZeRO-3 partitions differently and trains the same)
    _two_ranks(toy, tmp_path, tmp_path / "two", deepspeed=stage)  # 2 ranks x 1 sample: global batch 2 too
    two = _steps(tmp_path / "two")
    _assert_same_run(two, ref, range(1, SAVE + 1))  # the premise: the two layouts train alike
    _copy_checkpoint(tmp_path / "two", tmp_path / "one", SAVE)
    # On one rank the 2-rank checkpoint needs 2 micro-batches a step; with 1 it is refused.
    with pytest.raises(ConfigError, match="set gradient_accumulation_steps: 2"):
        _in_process(toy, tmp_path / "one", resume=True, deepspeed=stage)
    resumed = _in_process(toy, tmp_path / "one", resume=True, gradient_accumulation_steps=2, deepspeed=stage)
    ours = {r["step"]: r for r in resumed.records}
    assert sorted(ours) == list(range(SAVE + 1, STEPS + 1))
    _assert_same_run(ours, ref, range(SAVE + 1, STEPS + 1))
    # Every sample of epoch 0 exactly once (steps 1-4: 2 ranks for 3, then 1), then epoch 1 begins.
    trained = [two[s]["sample_ids"] for s in range(1, SAVE + 1)] + [ours[s]["sample_ids"] for s in range(SAVE + 1, 7)]
    order = DataOrder(8, batch_size=1, world_size=1, seed=0, accumulation=2)
    assert sorted(i for ids in trained[:4] for i in ids) == list(range(8))  # epoch 0: each sample once
    assert [sorted(ids) for ids in trained] == [
        sorted(order.permutation(s // 4)[s % 4 * 2 : s % 4 * 2 + 2]) for s in range(STEPS)
    ]
    _assert_same_weights(tmp_path / "one", ref_dir)
    state = json.loads((tmp_path / "one" / "checkpoints" / f"step-{STEPS}" / ckpt.STATE_FILE).read_text())
    assert state["world_size"] == 1 and state["data_order"]["accumulation"] == 2
    assert (tmp_path / "one" / "checkpoints" / f"step-{SAVE}" / "engine-universal" / "zero").is_dir()


@pytest.mark.slow
@pytest.mark.skipif(not (VENV_BIN / "torchrun").exists(), reason="torchrun not installed")
def test_one_rank_resumed_on_two_matches_an_uninterrupted_run(toy, reference, tmp_path):
    ref_dir, ref = reference
    _copy_checkpoint(ref_dir, tmp_path / "two", SAVE)
    _two_ranks(toy, tmp_path, tmp_path / "two", "--resume")
    ours = _steps(tmp_path / "two")
    assert sorted(ours) == list(range(SAVE + 1, STEPS + 1))
    _assert_same_run(ours, ref, range(SAVE + 1, STEPS + 1))
    _assert_same_weights(tmp_path / "two", ref_dir)
