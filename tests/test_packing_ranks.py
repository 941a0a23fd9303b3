"""Packing (``data.packing``) in the runs that partition or split the work: DeepSpeed ZeRO-3 on one
rank, and ZeRO-3 on two gloo ranks (ZeRO-2 on one rank: tests/test_packing.py). A packed run
trains as the same run padded (the same losses, labelled tokens and final weights), and every rank
packs and trains exactly the samples its data order gives it: none dropped by packing, none read
twice, none read by both ranks.

The trainer runs as ``ovis train`` runs it, with two watchers put in after ``setup()``: one records
which samples the dataset was asked for, one checks what the collator made of them (every sample
whole in its packed row) and whether the micro-batch was packed at all. Measured here: packed and
padded losses 1e-7 apart (relative; the test allows 1e-5); positions that do not restart at each
sample (attention across samples) put them 2e-4 apart, a sample left out of its row 4e-3."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from ovis.ports import free_port
from ovis.train import TrainConfig, Trainer
from ovis.train.distributed import local_launch_env
from ovis.train.schedule import DataOrder
from tests.test_train import _compose, _weights

WORLD = 2
#: 12 synthetic conversations and 4 text-only ones: 16 samples, one epoch of 2 ranks x 4 x 2.
SAMPLES = 16


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> tuple[Path, Path]:
    """clip-toy + qwen-toy, and 16 samples of mixed lengths: synthetic scenes (an image and a short
    question each), three short text conversations and a long one (rows then have room to share)."""
    from ovis.data.synth import SynthSpec, write_synthetic_dataset

    root = tmp_path_factory.mktemp("packing-ranks")
    info_path = write_synthetic_dataset(root, SynthSpec(train_images=12, eval_images=1, text_scenes=4), progress=False)
    text = [
        {
            "id": f"t{i}",
            "conversations": [
                {"from": "human", "value": "Say a number."},
                {"from": "gpt", "value": " ".join(["one two three"] * 30) if i == 0 else "two"},
            ],
        }
        for i in range(4)
    ]
    (root / "text.json").write_text(json.dumps(text))
    info = json.loads(info_path.read_text())
    info["text"] = {"meta_file": "text.json", "data_format": "conversation"}
    info_path.write_text(json.dumps(info))
    return _compose(root / "model"), info_path


def _fields(toy: tuple[Path, Path], out: Path, *, packing: bool, **fields: Any) -> dict[str, Any]:
    model, info = toy
    return {
        "stage": 3,
        "model": str(model),
        "output_dir": str(out),
        "data": {
            "dataset_info": str(info),
            "datasets": ["synth-conversations", "text"],
            "max_length": 200,
            "packing": packing,
        },
        "per_device_batch_size": 4,
        "lr": 3e-3,
        "max_steps": 4,
        "save_steps": 4,
        "logging_steps": 1,
        "seed": 0,
        "precision": "fp32",
        **fields,
    }


class _Reading(torch.utils.data.Dataset):
    """The trainer's dataset, noting every index it is asked for."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.read = inner, []

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> Any:
        self.read.append(int(index))
        return self.inner[index]


class _Watching:
    """The trainer's collator, noting for each micro-batch the samples it got and what it made."""

    def __init__(self, collate: Any, reading: _Reading) -> None:
        self.collate, self.reading, self.batches = collate, reading, []

    def __call__(self, samples: list[Any]) -> dict[str, Any]:
        batch = self.collate(samples)
        ids, self.reading.read = self.reading.read, []
        packed = "position_ids" in batch
        whole = True
        if packed:
            for sample, (row, start, n) in zip(samples, batch["sample_rows"].tolist(), strict=True):
                whole &= n == len(sample.input_ids)
                whole &= batch["input_ids"][row, start : start + n].tolist() == list(sample.input_ids)
                whole &= batch["labels"][row, start : start + n].tolist() == list(sample.labels)
        self.batches.append(
            {
                "ids": ids,
                "samples": int(batch.get("num_samples", batch["input_ids"].shape[0])),
                "rows": int(batch["input_ids"].shape[0]),
                "packed": packed,
                "whole": bool(whole),
            }
        )
        return batch


def _watched_run(config: TrainConfig) -> tuple[Trainer, list[dict[str, Any]]]:
    torch.set_num_threads(1)
    trainer = Trainer(config, progress=False)
    trainer.setup()
    trainer.dataset = _Reading(trainer.dataset)
    trainer.collator = watcher = _Watching(trainer.collator, trainer.dataset)
    trainer.fit()
    trainer.export()
    return trainer, watcher.batches


def _summary(trainer: Trainer, batches: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("step", "loss", "tokens", "samples", "skipped", "sample_ids")
    return {"records": [{k: r[k] for k in keys} for r in trainer.records], "batches": batches}


def _assert_trains_as_padded(
    packed: dict[str, Any], padded: dict[str, Any], packed_dir: Path, padded_dir: Path, model: Path
) -> None:
    """Run summaries ``packed`` / ``padded`` (their ``output_dir``s after them) of the input ``model``."""
    # Each micro-batch's loss is a mean over the same labelled tokens, attended to alike: fp32 rounding.
    losses = [r["loss"] for r in packed["records"]]
    assert losses == pytest.approx([r["loss"] for r in padded["records"]], rel=1e-5, abs=0)
    for key in ("tokens", "samples", "skipped", "sample_ids"):
        assert [r[key] for r in packed["records"]] == [r[key] for r in padded["records"]], key
    wa, wb = _weights(padded_dir / "final"), _weights(packed_dir / "final")
    assert wa.keys() == wb.keys()
    initial, changed = _weights(model), 0
    for key in wa:  # Adam divides by sqrt(v): 1e-7 apart in a gradient can become 1e-5 apart in a weight
        torch.testing.assert_close(wb[key], wa[key], rtol=1e-3, atol=1e-4, msg=key)
        changed += not torch.equal(wa[key], initial[key])
    assert changed > len(wa) // 2  # the runs trained (stage 3: everything)


def _assert_each_rank_read_its_own(
    batches: list[list[dict]], records: list[dict], order: DataOrder, *, packing: bool
) -> None:
    """``batches[rank]``: that rank's micro-batches; ``records``: rank 0's steps (every rank's ids)."""
    accumulation, per_epoch = order.accumulation, order.per_epoch
    for rank, mine in enumerate(batches):
        assert len(mine) == len(records) * accumulation == 2 * per_epoch, rank  # two epochs
        expected = [b for epoch in range(2) for b in order.batches(epoch, rank)]
        assert [b["ids"] for b in mine] == expected[: len(mine)], rank  # its own samples, in its order
        assert all(b["samples"] == len(b["ids"]) and b["whole"] for b in mine), rank  # none dropped
        shared = [b["packed"] and b["rows"] < b["samples"] for b in mine]
        assert any(shared) if packing else not any(shared), (rank, packing)
    for step, record in enumerate(records):
        micro = range(step * accumulation, (step + 1) * accumulation)
        read = [i for mine in batches for m in micro for i in mine[m]["ids"]]
        assert sorted(read) == sorted(record["sample_ids"]), step
    for epoch in range(2):  # each sample exactly once an epoch, across the ranks
        read = [i for mine in batches for b in mine[epoch * per_epoch : (epoch + 1) * per_epoch] for i in b["ids"]]
        assert sorted(read) == list(range(SAMPLES)), epoch


# -- ZeRO-3, one rank (in this process) ----------------------------------------------------------------
def test_a_packed_zero3_run_trains_as_the_padded_one(toy, tmp_path, one_thread):
    runs = {}
    for packing in (False, True):
        fields = _fields(
            toy, tmp_path / str(packing), packing=packing, deepspeed="zero3", gradient_accumulation_steps=2
        )
        trainer, batches = _watched_run(TrainConfig.model_validate(fields))
        assert trainer.zero_stage == 3 and trainer.collator.collate.packing is packing
        runs[packing] = _summary(trainer, batches)
    _assert_trains_as_padded(runs[True], runs[False], tmp_path / "True", tmp_path / "False", toy[0])
    order = DataOrder(SAMPLES, batch_size=4, world_size=1, seed=0, accumulation=2)
    for packing, run in runs.items():
        _assert_each_rank_read_its_own([run["batches"]], run["records"], order, packing=packing)


# -- two gloo ranks (spawned) ----------------------------------------------------------------------------
def _on_rank(rank: int, port: int, runs: dict[str, dict[str, Any]], out: str) -> None:
    """One rank: the runs of ``runs`` one after the other, in one process group."""
    os.environ.update(local_launch_env(rank, WORLD, port))
    os.environ["OMP_NUM_THREADS"] = "1"
    for name, fields in runs.items():
        trainer, batches = _watched_run(TrainConfig.model_validate(fields))
        assert trainer.processes.world_size == WORLD
        Path(out, f"{name}-rank{rank}.json").write_text(json.dumps(_summary(trainer, batches)))


@pytest.mark.slow
def test_packed_zero3_runs_on_two_ranks_train_as_padded_and_each_rank_packs_its_own_samples(toy, tmp_path):
    fields = {
        name: _fields(toy, tmp_path / name, packing=name == "packed", deepspeed="zero3")
        for name in ("padded", "packed")
    }
    mp.spawn(_on_rank, args=(free_port(), fields, str(tmp_path)), nprocs=WORLD, join=True)
    packed, padded = (
        [json.loads((tmp_path / f"{name}-rank{rank}.json").read_text()) for rank in range(WORLD)]
        for name in ("packed", "padded")
    )
    assert packed[0]["records"][0]["sample_ids"] and not packed[1]["records"][0]["sample_ids"]  # rank 0's
    _assert_trains_as_padded(packed[0], padded[0], tmp_path / "packed", tmp_path / "padded", toy[0])
    assert [r["loss"] for r in packed[1]["records"]] == [r["loss"] for r in packed[0]["records"]]  # summed
    order = DataOrder(SAMPLES, batch_size=4, world_size=WORLD, seed=0, accumulation=1)
    _assert_each_rank_read_its_own([p["batches"] for p in packed], packed[0]["records"], order, packing=True)
    _assert_each_rank_read_its_own([p["batches"] for p in padded], padded[0]["records"], order, packing=False)
