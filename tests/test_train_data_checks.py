"""ovis.train and bad training data: checked before the model loads, micro-batches whose samples were
all skipped take no optimizer step (and a resumed run still matches an uninterrupted one), and one
total of the skipped records at the end of a run (logged and in ``skips.json``), failed runs too."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from ovis.data import DataError
from ovis.train import Trainer
from tests.test_train import (
    VENV_BIN,
    _compose,
    _config,
    _metrics,
    _run,
    _run_child,
    _weights,
    _yaml,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory) -> Path:
    """test_train's toy pair: clip-toy + qwen-toy, V = 256."""
    return _compose(tmp_path_factory.mktemp("toy") / "model")


class _Loaded(AssertionError):
    pass


@pytest.fixture
def nothing_heavy(monkeypatch):
    """Make loading the model, starting the processes (DeepSpeed) or building the engine fail loudly."""
    import ovis.train.trainer as trainer

    def refuse(what):
        def called(*args, **kwargs):
            raise _Loaded(f"{what} was called before the data was checked")

        return called

    monkeypatch.setattr(trainer, "load_training_model", refuse("the model loader"))
    monkeypatch.setattr(trainer, "start_processes", refuse("start_processes (DeepSpeed)"))
    monkeypatch.setattr(trainer, "build_engine", refuse("build_engine"))


def _write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def _conversation(i: int, image: str | None = None) -> dict:
    question = ("<image>\n" if image else "") + "Say a number."
    row = {
        "id": f"r{i}",
        "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": ("one", "two")[i % 2]}],
    }
    return row | ({"image": image} if image else {})


# -- checked before the model loads ----------------------------------------------------------------
def _broken_data(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8), "red").save(root / "images" / "ok.png")
    _write(root / "good.json", [_conversation(0), _conversation(1, "ok.png")])
    _write(root / "gone.json", [_conversation(i, f"gone{i}.png") for i in range(3)])
    _write(root / "fields.jsonl", "\n".join(json.dumps({"id": i, "conversations": "hi"}) for i in range(2)))
    _write(root / "cut.json", '[{"id": 1, "conversations": [')
    return _write(
        root / "dataset_info.json",
        {
            "good": {"meta_file": "good.json", "image_dir": "images", "data_format": "conversation"},
            "gone": {"meta_file": "gone.json", "image_dir": "images", "data_format": "conversation"},
            "fields": {"meta_file": "fields.jsonl", "data_format": "conversation"},
            "cut": {"meta_file": "cut.json", "data_format": "conversation"},
            "no-meta": {"meta_file": "absent.jsonl", "data_format": "conversation"},
            "no-dir": {"meta_file": "good.json", "image_dir": "pictures", "data_format": "conversation"},
            "broken": {"meta_file": "good.json", "data_format": "conversation", "extra": 1},
        },
    )


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (
            ["good", "gone"],
            r"gone\.json: dataset 'gone' has no usable record \(all 3 skipped: 3 image not found\); "
            r"first: gone\[0\] \(.*gone\.json\): image not found: .*gone0\.png",
        ),
        (
            ["fields"],
            r"fields\.jsonl: dataset 'fields' has no usable record .* first: fields\[0\] \(.*fields\.jsonl "
            r"line 1\): bad conversations: 'conversations' is str 'hi'; expected a list",
        ),
        (["good", "cut"], r"cut\.json: not valid JSON at line 1 column"),
        (["no-meta"], r"absent\.jsonl: meta file not found"),
        (["no-dir"], r"dataset_info\.json: no-dir\.image_dir: image directory .*pictures not found"),
        (["good", "broken"], r"dataset_info\.json: broken\.extra: Extra inputs are not permitted"),
        (["good", "godo"], r"unknown dataset 'godo'\. Did you mean 'good'"),
    ],
    ids=["no-usable-record", "fields-by-line", "bad-json", "no-meta-file", "no-image-dir", "broken-entry", "unknown"],
)
def test_data_errors_come_before_the_model_loads_and_deepspeed_starts(tmp_path, nothing_heavy, names, message):
    info = _broken_data(tmp_path / "data")
    (tmp_path / "model").mkdir()
    config = _config(tmp_path / "model", info, tmp_path / "run", deepspeed="zero2")
    config = config.model_copy(update={"data": config.data.model_copy(update={"datasets": names})})
    with pytest.raises(DataError, match=message):
        Trainer(config, progress=False).setup()
    # A run naming only healthy datasets gets past the data (to the first heavy step, refused here).
    healthy = config.model_copy(update={"data": config.data.model_copy(update={"datasets": ["good"]})})
    with pytest.raises(_Loaded, match="start_processes"):
        Trainer(healthy, progress=False).setup()


def test_ovis_train_names_the_data_problem_in_one_line(tmp_path, nothing_heavy, capsys):
    import yaml

    from ovis.cli import main

    info = _broken_data(tmp_path / "data")
    (tmp_path / "model").mkdir()
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {"model": "model", "output_dir": "run", "data": {"dataset_info": str(info), "datasets": ["good", "gone"]}}
        )
    )
    assert main(["train", "--config", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "error: " in err and "dataset 'gone' has no usable record" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing written either


# -- micro-batches whose samples were all skipped, and the skip total ------------------------------
@pytest.fixture(scope="module")
def half_bad(tmp_path_factory) -> Path:
    """16 records: 8 text conversations, 6 with a corrupt image (skipped when encoded), 2 with a
    missing image (left out when read)."""
    root = tmp_path_factory.mktemp("half-bad")
    (root / "images").mkdir()
    (root / "images" / "corrupt.png").write_bytes(b"not an image at all " * 20)
    rows = [_conversation(i) for i in range(8)] + [_conversation(i, "corrupt.png") for i in range(8, 14)]
    rows += [_conversation(i, "missing.png") for i in range(14, 16)]
    _write(root / "half.json", rows)
    return _write(
        root / "dataset_info.json",
        {"half": {"meta_file": "half.json", "image_dir": "images", "data_format": "conversation"}},
    )


def _half_config(model: Path, info: Path, out: Path, **fields):
    fields = {"deepspeed": None, **fields}
    config = _config(
        model, info, out, per_device_batch_size=1, gradient_accumulation_steps=2, max_steps=6, save_steps=3, **fields
    )
    return config.model_copy(update={"data": config.data.model_copy(update={"datasets": ["half"]})})


def _skips(out: Path) -> dict:
    return json.loads((out / "skips.json").read_text())


@pytest.mark.parametrize("engine", ["zero2", None], ids=["deepspeed", "pytorch"])
def test_all_skipped_micro_batches_take_no_step_and_a_resume_still_matches(engine, toy_dir, half_bad, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ovis.train")
    config = _half_config(toy_dir, half_bad, tmp_path / "a", deepspeed=engine)
    reference = _run(config)
    records = reference.records
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    # Every step trained on accumulation x batch size real samples: none was an empty pass.
    assert all(r["samples"] == 2 and r["tokens"] > 0 for r in records), [(r["samples"], r["skipped"]) for r in records]
    skipped = sum(r["skipped"] for r in records)
    assert skipped > 0  # some micro-batches were passed over (their samples are counted, not trained on)
    assert all(len(r["sample_ids"]) == 2 + r["skipped"] for r in records)
    assert reference.position.micro == 12 + skipped  # read, but not in a step: the position says so

    # One total at the end: read-time and encode-time skips together, by reason, with examples.
    report = _skips(tmp_path / "a")
    assert report["finished"] and report["step"] == 6 and report["samples_skipped"] == skipped
    assert report["records_total"] == 16 and report["by_reason"]["image not found"] == 2
    assert report["by_stage"]["read"] == 2 and report["by_stage"]["encode"] == report["by_reason"]["image unreadable"]
    assert report["examples"]["image not found"][0]["source"] == "half[14]"
    assert all(e["file"] == str(half_bad.parent / "half.json") for kind in report["examples"].values() for e in kind)
    totals = [m for m in caplog.messages if m.startswith("data: skipped")]
    assert len(totals) == 1, totals
    assert "image not found (half[14], half[15])" in totals[0] and "image unreadable (" in totals[0]
    assert f"{skipped} skipped sample reads in 6 steps" in totals[0]

    # Killed after step 4 (its last checkpoint: step 3): the total is still written, marked unfinished.
    class Killed(Exception):
        pass

    def kill_after_step_4(step, record):
        if step == 4:
            raise Killed

    with pytest.raises(Killed):
        _run(config.model_copy(update={"output_dir": tmp_path / "b"}), on_step_end=kill_after_step_4)
    interrupted = _skips(tmp_path / "b")
    assert not interrupted["finished"] and interrupted["step"] == 4 and interrupted["records_skipped"] >= 2

    resumed = _run(config.model_copy(update={"output_dir": tmp_path / "b"}), resume=True)
    assert [r["step"] for r in resumed.records] == [4, 5, 6]
    for ours, theirs in zip(resumed.records, records[3:], strict=True):
        assert ours["sample_ids"] == theirs["sample_ids"]
        assert ours["skipped"] == theirs["skipped"]
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5)
    a, b = _weights(tmp_path / "a" / "final"), _weights(tmp_path / "b" / "final")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    again = _skips(tmp_path / "b")  # skips found before the checkpoint were kept in it
    for key in ("records_total", "records_skipped", "by_reason", "by_stage", "samples_skipped"):
        assert again[key] == report[key], key


def test_data_that_is_all_skipped_when_encoded_stops_the_run(toy_dir, tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "images" / "corrupt.png").write_bytes(b"not an image at all " * 20)
    _write(root / "all.json", [_conversation(i, "corrupt.png") for i in range(4)])
    info = _write(
        root / "dataset_info.json",
        {"half": {"meta_file": "all.json", "image_dir": "images", "data_format": "conversation"}},
    )
    config = _half_config(toy_dir, info, tmp_path / "run")
    with pytest.raises(DataError, match=r"(?s)no usable sample in 4 micro-batches in a row .* 4 image unreadable"):
        _run(config)
    report = _skips(tmp_path / "run")
    assert not report["finished"] and report["step"] == 0 and report["by_reason"] == {"image unreadable": 4}


@pytest.mark.slow
@pytest.mark.skipif(not (VENV_BIN / "torchrun").exists(), reason="torchrun not installed")
def test_two_processes_pass_over_micro_batches_skipped_on_both_and_total_both_ranks_skips(toy_dir, half_bad, tmp_path):
    # One sample per rank per micro-batch: some micro-batches are empty on one rank (it makes a zero-loss
    # pass, in step with the other), some on both (passed over by both).
    config = _yaml(
        tmp_path,
        toy_dir,
        half_bad,
        "two",
        deepspeed="zero2",
        max_steps=6,
        save_steps=3,
        per_device_batch_size=1,
        gradient_accumulation_steps=2,
        data={"dataset_info": str(half_bad), "datasets": ["half"]},
    )
    _run_child(
        [
            str(VENV_BIN / "torchrun"),
            "--nproc_per_node",
            "2",
            "-m",
            "ovis",
            "train",
            "--no-progress",
            "--config",
            str(config),
        ]
    )
    metrics = _metrics(tmp_path / "two")
    assert sorted(metrics) == [1, 2, 3, 4, 5, 6]
    assert all(r["samples"] >= 2 and r["tokens"] > 0 for r in metrics.values())
    report = _skips(tmp_path / "two")
    assert report["finished"] and report["samples_skipped"] == sum(r["skipped"] for r in metrics.values())
    corrupt = {i for r in metrics.values() for i in r["sample_ids"] if i >= 8}  # records 8-13 (of 14 read)
    assert corrupt and report["by_reason"] == {"image unreadable": len(corrupt), "image not found": 2}
