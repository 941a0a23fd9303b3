"""A run that would destroy an earlier result, or save a diverged model, stops first and says why."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from ovis.errors import OutputExistsError
from ovis.train import TrainConfig, Trainer
from ovis.train.trainer import TrainingDiverged
from tests.test_train import _compose


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    from ovis.data.synth import SynthSpec, write_synthetic_dataset

    root = tmp_path_factory.mktemp("refusals")
    info = write_synthetic_dataset(root / "data", SynthSpec(train_images=4, eval_images=1), progress=False)
    return _compose(root / "model"), info


def _config(setup, out: Path, **fields) -> TrainConfig:
    model, info = setup
    base = {
        "stage": 3, "model": str(model), "output_dir": str(out), "precision": "fp32", "seed": 0,
        "data": {"dataset_info": str(info), "datasets": ["synth-conversations"]},
        "per_device_batch_size": 2, "max_steps": 2, "save_steps": 1, "logging_steps": 1,
    }
    return TrainConfig.model_validate({**base, **fields})


def _digest(directory: Path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())).hexdigest()


def test_a_finished_run_without_checkpoints_is_not_overwritten(setup, tmp_path):
    import shutil

    Trainer(_config(setup, tmp_path / "run"), progress=False).run()
    shutil.rmtree(tmp_path / "run" / "checkpoints")  # e.g. deleted to free the disk
    before = _digest(tmp_path / "run" / "final")
    for resume in (False, True):
        with pytest.raises(OutputExistsError, match=r"run already holds an earlier run's final and metrics\.jsonl"):
            Trainer(_config(setup, tmp_path / "run", lr=1e-2), progress=False, resume=resume).run()
    assert _digest(tmp_path / "run" / "final") == before


def test_a_diverged_run_stops_before_saving_its_model(setup, tmp_path):
    config = _config(setup, tmp_path / "run", lr=1e30, max_steps=4, save_steps=1)
    with pytest.raises(TrainingDiverged, match=r"step [234]: the loss is (nan|inf).*The newest checkpoint is .*step-"):
        Trainer(config, progress=False).run()
    assert not (tmp_path / "run" / "final").exists()
    steps = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert steps and all(int(name.split("-")[1]) < 4 for name in steps)
