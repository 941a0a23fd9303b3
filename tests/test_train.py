"""ovis.train: module selection, schedules, checkpoints, DeepSpeed runs on the CPU (ZeRO-2, ZeRO-3,
LoRA, resume, a killed run, two processes) and plain PyTorch runs (``deepspeed: null``) on the toy
model pair. The config itself: tests/test_train_config.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

import ovis
from ovis.errors import ConfigError, InputFileError, OvisError
from ovis.train import TrainConfig, Trainer, apply_train_modules, load_train_config
from ovis.train import checkpoint as ckpt
from ovis.train.distributed import LAUNCH_ENV_VARS
from ovis.train.modules import lr_groups
from ovis.train.schedule import DataOrder, lr_multiplier, tau_at

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


# -- fixtures -------------------------------------------------------------------------------------
def _compose(out: Path, **options) -> Path:
    torch.manual_seed(0)
    ovis.compose(vit="clip-toy", llm="qwen-toy", visual_vocab_size=256, out=out, **options)
    return out


@pytest.fixture(scope="session")
def toy_dir(tmp_path_factory) -> Path:
    """clip-toy + qwen-toy (512-token vocabulary, tied embeddings), V = 256."""
    return _compose(tmp_path_factory.mktemp("toy") / "model")


@pytest.fixture(scope="session")
def gumbel_dir(tmp_path_factory) -> Path:
    return _compose(tmp_path_factory.mktemp("gumbel") / "model", tokenize_function="gumbel_argmax")


@pytest.fixture(scope="session")
def data_info(tmp_path_factory) -> Path:
    """16 synthetic scenes (3 questions each), 4 text-only conversations, and "bad": a record whose image
    is missing (left out when the data is read), one whose image is corrupt (skipped when encoded) and
    a good one. dataset_info.json also holds a broken entry no run names (it must not matter)."""
    from ovis.data.synth import SynthSpec, write_synthetic_dataset

    root = tmp_path_factory.mktemp("data")
    info_path = write_synthetic_dataset(root, SynthSpec(train_images=16, eval_images=1), progress=False)
    text = [
        {"id": f"t{i}", "conversations": [{"from": "human", "value": "Say a number."},
                                          {"from": "gpt", "value": ("one", "two")[i % 2]}]}
        for i in range(4)
    ]
    (root / "text.json").write_text(json.dumps(text))
    (root / "images" / "corrupt.png").write_bytes(b"\x89PNG not really" * 20)
    bad = [{"id": f"bad-{i}", "image": image,
            "conversations": [{"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": "x"}]}
           for i, image in enumerate(("missing.png", "corrupt.png"))]
    bad.append(text[0] | {"id": "good"})
    (root / "bad.json").write_text(json.dumps(bad))
    info = json.loads(info_path.read_text())
    info["text"] = {"meta_file": "text.json", "data_format": "conversation"}
    info["bad"] = {"meta_file": "bad.json", "image_dir": "images", "data_format": "conversation"}
    info["unused-and-broken"] = {"meta_file": "nothing.csv", "data_format": "captions"}
    info_path.write_text(json.dumps(info))
    return info_path


DATASETS = ["synth-conversations", "text", "bad"]


def _config(model: Path, info: Path, out: Path, **fields) -> TrainConfig:
    base = dict(
        stage=3, model=model, output_dir=out, data={"dataset_info": info, "datasets": DATASETS},
        per_device_batch_size=4, lr=3e-3, max_steps=6, save_steps=3, logging_steps=2, seed=0,
        # Runs are compared number for number; ``auto`` may pick bf16 on one run and fp32 on the
        # next where the CPU's two rates are close.
        precision="fp32",
    )
    base.update(fields)
    return TrainConfig.model_validate(base)


def _run(config: TrainConfig, **kwargs) -> Trainer:
    trainer = Trainer(config, progress=False, **kwargs)
    trainer.run()
    return trainer


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def _probe(processor) -> dict[str, torch.Tensor]:
    image = Image.new("RGB", (32, 32), "red")
    batch = processor([[{"role": "user", "content": "<image>\nWhat colour is it?"}]], [[image]])
    return {k: v for k, v in batch.items() if k != "labels"}


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**batch).logits


# -- modules --------------------------------------------------------------------------------------
def _trainable(model) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_stage_selections_freeze_exactly_the_right_parameters(toy_dir):
    model, _ = ovis.load(toy_dir)
    names = [name for name, _ in model.named_parameters()]
    last = len(model.backbone.blocks()) - 1
    post_norm = {n for n in names if "post_layernorm" in n}  # CLIP features come before it

    summary = apply_train_modules(model, ["visual_tokenizer.head", "vte", "visual_tokenizer.re_init_layers"])
    expected = {n for n in names if n.startswith(("visual_tokenizer.head.", "vte."))
                or f"encoder.layers.{last}." in n}
    assert _trainable(model) == expected
    assert summary.trainable["llm"] == 0 and summary.trainable["visual_tokenizer.head"] > 0

    summary = apply_train_modules(model, ["visual_tokenizer", "vte"])
    assert _trainable(model) == {n for n in names if n.startswith(("visual_tokenizer.", "vte."))} - post_norm
    assert sorted(summary.unused_frozen) == sorted(post_norm)

    summary = apply_train_modules(model, ["all"])
    assert _trainable(model) == set(names) - post_norm
    assert summary.num_trainable == sum(p.numel() for p in model.parameters()) - sum(
        p.numel() for n, p in model.named_parameters() if n in post_norm)

    apply_train_modules(model, ["llm", "visual_tokenizer.backbone"])
    assert _trainable(model) == {n for n in names if n.startswith(("llm.", "visual_tokenizer.backbone."))} - post_norm
    with pytest.raises(ValueError, match=r"unknown train_modules token 'mlp'; valid: all, llm"):
        apply_train_modules(model, ["mlp"])


def test_module_lr_groups_give_each_part_its_rate(toy_dir):
    model, _ = ovis.load(toy_dir)
    apply_train_modules(model, ["all"])
    rates = {"visual_tokenizer": 1e-3, "visual_tokenizer.head": 5e-3}
    groups = lr_groups(model, rates, 2e-4, 0.1)
    assert [g["name"] for g in groups][:2] == ["base", "base.no_decay"]  # the base groups first
    by_name = {n: p for n, p in model.named_parameters()}
    seen = [id(p) for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters() if p.requires_grad)  # each once
    rate = {id(p): g["lr"] for g in groups for p in g["params"]}
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    for name, param in by_name.items():
        if not param.requires_grad:
            continue
        expected = 5e-3 if name.startswith("visual_tokenizer.head.") else (
            1e-3 if name.startswith("visual_tokenizer.") else 2e-4)
        assert rate[id(param)] == expected, name
        assert decay[id(param)] == (0.1 if param.ndim >= 2 else 0.0), name
    with pytest.raises(ValueError, match=r"unknown module_lr key\(s\) 'vision'; valid: llm, visual_tokenizer"):
        load_train_config(None, ["model=m", "output_dir=o", "module_lr={vision: 1e-3}"])
    with pytest.raises(ValueError, match="module_lr values must be >= 0"):
        load_train_config(None, ["model=m", "output_dir=o", "module_lr={vte: -1}"])


def test_module_lr_reaches_the_optimizer(toy_dir, data_info, tmp_path, one_thread):
    """Base lr 0 and a rate for the VTE alone: after training, only the VTE has moved."""
    config = _config(toy_dir, data_info, tmp_path / "run", lr=0.0, module_lr={"vte": 1e-2}, max_steps=3)
    before = _weights(toy_dir)
    _run(config)
    after = _weights(tmp_path / "run" / "final")
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("vte.") for k in moved), sorted(moved)[:5]


def test_reinit_changes_the_last_block_only(toy_dir):
    model, _ = ovis.load(toy_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_train_modules(model, ["visual_tokenizer.re_init_layers"], reinit_last_block=True)
    last = f"encoder.layers.{len(model.backbone.blocks()) - 1}."
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(last in k for k in changed)
    assert {k for k in before if last in k and k.endswith("weight") and "norm" not in k} <= changed


def test_loss_wrapper_keeps_visual_params_in_the_graph_for_text_only_batches(toy_dir):
    from ovis.data import DataCollator
    from ovis.train.step import TrainStep

    model, processor = ovis.load(toy_dir)
    apply_train_modules(model, ["visual_tokenizer", "vte"])
    sample = processor.encode([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])
    batch = DataCollator(processor)([sample])
    batch.pop("num_skipped"), batch.pop("skips")  # counts, not model inputs
    size = model.backbone.spec.image_size
    loss, count = TrainStep(model, image_size=size, dummy_visual=False)(**batch)
    assert count > 0 and not loss.requires_grad  # without the zero term the visual path is out of the graph
    loss, _ = TrainStep(model, image_size=size, dummy_visual=True)(**batch)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and not g.any() for g in grads)  # in the graph, with zero gradients
    # No label left (a batch whose samples were all skipped is replaced by such a pass): loss 0, not NaN.
    batch["labels"].fill_(-100)
    loss, count = TrainStep(model, image_size=size, dummy_visual=True)(**batch)
    assert count == 0 and loss.item() == 0.0


# -- schedules, data order, checkpoints ----------------------------------------------------------
def test_lr_schedule_and_tau():
    kw = dict(total_steps=10, warmup=2, kind="cosine", min_lr_ratio=0.1)
    assert lr_multiplier(0, **kw) == pytest.approx(1 / 3) and lr_multiplier(1, **kw) == pytest.approx(2 / 3)
    assert lr_multiplier(2, **kw) == pytest.approx(1.0) and lr_multiplier(9, **kw) == pytest.approx(0.1)
    values = [lr_multiplier(s, **kw) for s in range(2, 10)]
    assert values == sorted(values, reverse=True)
    assert lr_multiplier(5, **(kw | {"kind": "constant"})) == 1.0
    assert lr_multiplier(9, **(kw | {"kind": "linear", "min_lr_ratio": 0.0})) == pytest.approx(0.0)
    assert tau_at(0, 11, 5.0, 0.05) == 5.0 and tau_at(10, 11, 5.0, 0.05) == pytest.approx(0.05)


def test_data_order_is_seeded_sharded_and_resumable():
    order = DataOrder(10, batch_size=2, world_size=2, seed=3)
    epoch0 = [[i for batch in order.batches(0, rank) for i in batch] for rank in (0, 1)]
    assert len(epoch0[0]) == len(epoch0[1]) == 5 and set(epoch0[0]) | set(epoch0[1]) == set(range(10))
    assert not set(epoch0[0]) & set(epoch0[1])
    assert order.batches(0, 0) == DataOrder(10, batch_size=2, world_size=2, seed=3).batches(0, 0)
    assert order.batches(1, 0) != order.batches(0, 0)
    assert order.per_epoch == 3 and order.locate(7) == (2, 1)
    uneven = DataOrder(5, batch_size=2, world_size=2, seed=0)  # padded by wrapping around
    assert [len(b) for b in uneven.batches(0, 1)] == [2, 1]
    assert order.total_steps(epochs=2, accumulation=4) == 2


def test_only_complete_checkpoints_count(tmp_path):
    root = tmp_path / "checkpoints"
    for name, complete in (("step-2", True), ("step-4", True), ("step-6.tmp", False), ("step-8", False)):
        (root / name).mkdir(parents=True)
        if complete:
            (root / name / ckpt.STATE_FILE).write_text("{}")
            (root / name / ckpt.COMPLETE).write_text("")
    assert ckpt.latest_checkpoint(root) == root / "step-4"
    removed = ckpt.prune_checkpoints(root, keep=1, current=10)
    assert sorted(p.name for p in removed) == ["step-2", "step-6.tmp", "step-8"]
    assert sorted(p.name for p in root.iterdir()) == ["step-4"]


def test_a_bad_checkpoint_state_is_an_input_error(tmp_path):
    path = tmp_path / "step-2"
    path.mkdir()
    with pytest.raises(InputFileError, match="step-2 is not a complete checkpoint"):
        ckpt.read_state(path)
    (path / ckpt.COMPLETE).write_text("")
    (path / ckpt.STATE_FILE).write_text("{truncated")
    with pytest.raises(InputFileError, match=r"trainer_state.json is not valid JSON"):
        ckpt.read_state(path)


# -- training runs (DeepSpeed, single process) ---------------------------------------------------
def test_zero2_run_learns_logs_checkpoints_and_exports(toy_dir, data_info, tmp_path, one_thread):
    config = _config(toy_dir, data_info, tmp_path / "run", max_steps=40, save_steps=15, logging_steps=10)
    trainer = _run(config)
    losses = [r["loss"] for r in trainer.records]
    assert len(losses) == 40
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < first - 1.0, (first, last)
    assert sum(r["skipped"] for r in trainer.records) > 0  # the record with a missing image
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 40
    kept = [p.name for _, p in ckpt.complete_checkpoints(tmp_path / "run" / "checkpoints")]
    assert kept == ["step-30", "step-40"]  # save_total_limit 2; the final step is always saved
    final = tmp_path / "run" / "final"
    loaded, processor = ovis.load(final)
    batch = _probe(processor)
    torch.testing.assert_close(_logits(loaded, batch), _logits(trainer.model, batch), rtol=1e-5, atol=1e-5)
    # Not resuming into a directory with checkpoints is refused rather than overwriting them.
    with pytest.raises(FileExistsError, match="--resume") as caught:
        Trainer(config, progress=False).setup()
    assert isinstance(caught.value, OvisError)


@pytest.mark.parametrize("engine", ["zero2", None], ids=["deepspeed", "pytorch"])
def test_resume_continues_with_the_same_data_and_losses(engine, gumbel_dir, data_info, tmp_path, one_thread):
    # Gumbel sampling draws random numbers every step: equal losses mean the RNG was restored too.
    config = _config(gumbel_dir, data_info, tmp_path / "a", gradient_accumulation_steps=2, deepspeed=engine)
    reference = _run(config)
    # A run that stopped after step 3: only its step-3 checkpoint (and a half-written step-6) exist.
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "a" / "checkpoints" / "step-3", tmp_path / "b" / "checkpoints" / "step-3")
    (tmp_path / "b" / "checkpoints" / "step-6.tmp").mkdir()
    resumed = _run(config.model_copy(update={"output_dir": tmp_path / "b"}), resume=True)
    assert [r["step"] for r in resumed.records] == [4, 5, 6]
    for ours, theirs in zip(resumed.records, reference.records[3:], strict=True):
        assert ours["sample_ids"] == theirs["sample_ids"]
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5)
    a, b = _weights(tmp_path / "a" / "final"), _weights(tmp_path / "b" / "final")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert not (tmp_path / "b" / "checkpoints" / "step-6.tmp").exists()
    # A checkpoint of one engine cannot continue under the other.
    other = None if engine else "zero2"
    written, now = ("deepspeed", "torch") if engine else ("torch", "deepspeed")
    with pytest.raises(ConfigError, match=f"written by the {written} engine and this run uses the {now} engine"):
        Trainer(config.model_copy(update={"deepspeed": other}), resume=True, progress=False).setup()


def test_stage1_trains_only_its_parts_and_anneals_tau(gumbel_dir, data_info, tmp_path, one_thread):
    config = _config(gumbel_dir, data_info, tmp_path / "s1", stage=1, lr=1e-3, max_steps=4, save_steps=4)
    trainer = _run(config)
    assert [r["tau"] for r in trainer.records] == pytest.approx([tau_at(s, 4, 5.0, 0.05) for s in range(4)])
    before, after = _weights(gumbel_dir), _weights(tmp_path / "s1" / "final")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    last = f"encoder.layers.{len(trainer.model.backbone.blocks()) - 1}."
    assert all(k.startswith(("visual_tokenizer.head.", "vte.")) or last in k for k in changed)
    assert any(k.startswith("vte.") for k in changed) and any(last in k for k in changed)
    assert any(k.startswith("visual_tokenizer.head.") for k in changed)
    assert json.loads((tmp_path / "s1" / "final" / "config.json").read_text())["tau"] == pytest.approx(0.05)


def test_zero3_matches_zero2_and_exports_a_consolidated_model(toy_dir, data_info, tmp_path, one_thread):
    zero2 = _run(_config(toy_dir, data_info, tmp_path / "z2", max_steps=4, save_steps=4))
    zero3 = _run(_config(toy_dir, data_info, tmp_path / "z3", max_steps=4, save_steps=4,
                         deepspeed="zero3", gradient_checkpointing=True))
    assert zero3.zero_stage == 3
    assert [r["loss"] for r in zero3.records] == pytest.approx([r["loss"] for r in zero2.records], rel=1e-4)
    a, b = _weights(tmp_path / "z2" / "final"), _weights(tmp_path / "z3" / "final")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-4)
    ovis.load(tmp_path / "z3" / "final")


def test_lora_trains_adapters_only_and_merges_on_export(toy_dir, data_info, tmp_path, one_thread):
    config = _config(toy_dir, data_info, tmp_path / "lora", max_steps=4, save_steps=4, lr=1e-2,
                     train_modules=["llm"], lora={"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0})
    trainer = _run(config)
    trainable = _trainable(trainer.model)
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    before, after = _weights(toy_dir), _weights(tmp_path / "lora" / "final")
    assert before.keys() == after.keys()  # merged: no peft keys left
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("llm.") and k.rsplit(".", 2)[-2].endswith("proj") for k in changed)
    loaded, processor = ovis.load(tmp_path / "lora" / "final")
    batch = _probe(processor)
    torch.testing.assert_close(_logits(loaded, batch), _logits(trainer.model, batch), rtol=1e-4, atol=1e-4)

    config = config.model_copy(update={"output_dir": tmp_path / "unmerged",
                                       "lora": config.lora.model_copy(update={"merge_on_export": False})})
    _run(config)
    assert (tmp_path / "unmerged" / "final" / "lora_adapter" / "adapter_config.json").is_file()
    base = _weights(tmp_path / "unmerged" / "final")
    assert all(torch.equal(before[k], base[k]) for k in before)


# -- training runs without DeepSpeed (deepspeed: null) --------------------------------------------
def test_plain_pytorch_run_learns_like_zero2_and_exports(toy_dir, data_info, tmp_path, one_thread):
    """Same optimizer, groups, accumulation, clipping and schedule as DeepSpeed: the same numbers."""
    fields = dict(max_steps=12, save_steps=6, gradient_accumulation_steps=2, weight_decay=0.1)
    zero2 = _run(_config(toy_dir, data_info, tmp_path / "z2", **fields))
    plain = _run(_config(toy_dir, data_info, tmp_path / "plain", deepspeed=None, **fields))
    assert plain.engine.kind == "torch" and plain.zero_stage == 0
    losses = [r["loss"] for r in plain.records]
    assert losses == pytest.approx([r["loss"] for r in zero2.records], rel=1e-4)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 1.0, losses
    assert [r["grad_norm"] for r in plain.records] == pytest.approx([r["grad_norm"] for r in zero2.records], rel=1e-3)
    assert [r["lr"] for r in plain.records] == pytest.approx([r["lr"] for r in zero2.records])
    a, b = _weights(tmp_path / "z2" / "final"), _weights(tmp_path / "plain" / "final")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=1e-4)
    kept = [p.name for _, p in ckpt.complete_checkpoints(tmp_path / "plain" / "checkpoints")]
    assert kept == ["step-6", "step-12"]
    assert len((tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()) == 12
    loaded, processor = ovis.load(tmp_path / "plain" / "final")
    batch = _probe(processor)
    torch.testing.assert_close(_logits(loaded, batch), _logits(plain.model, batch), rtol=1e-5, atol=1e-5)


def test_plain_pytorch_bf16_computes_in_bf16_and_exports_bf16(toy_dir, data_info, tmp_path, one_thread):
    zero2 = _run(_config(toy_dir, data_info, tmp_path / "z2", max_steps=3, save_steps=3, precision="bf16"))
    plain = _run(_config(toy_dir, data_info, tmp_path / "plain", max_steps=3, save_steps=3, precision="bf16",
                         deepspeed=None))
    assert [r["loss"] for r in plain.records] == pytest.approx([r["loss"] for r in zero2.records], rel=1e-2)
    assert {v.dtype for v in _weights(tmp_path / "plain" / "final").values()} == {torch.bfloat16}


def test_user_errors_of_a_run_are_ovis_errors(toy_dir, data_info, tmp_path, monkeypatch):
    config = _config(toy_dir, data_info, tmp_path / "run", deepspeed=None)
    with pytest.raises(InputFileError, match=r"model directory .*nowhere \(the config's `model`\) not found"):
        Trainer(config.model_copy(update={"model": tmp_path / "nowhere"}), progress=False).setup()
    missing = config.data.model_copy(update={"dataset_info": tmp_path / "nowhere.json"})
    with pytest.raises(OvisError, match="nowhere.json"):
        Trainer(config.model_copy(update={"data": missing}), progress=False).setup()
    with pytest.raises(ConfigError, match="set data.dataset_info and data.datasets"):
        Trainer(config.model_copy(update={"data": missing.model_copy(update={"dataset_info": None})}),
                progress=False).setup()
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="deepspeed is null .* a launcher started 2 processes"):
        Trainer(config, progress=False).setup()


# -- subprocess runs (slow) ------------------------------------------------------------------------
def _run_child(command: list[str], **kwargs) -> None:
    """Run a child to completion; on failure show the end of what it printed, not just its exit code."""
    proc = subprocess.run(command, env=_env(), capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, f"{' '.join(command)} exited {proc.returncode}:\n{proc.stderr[-4000:]}"


def _env() -> dict[str, str]:
    """The environment of a child run: in-process runs leave a one-rank group's launch variables here
    (its port still held), and a child must make its own group, not join that one."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV_VARS}
    return {**env, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _yaml(tmp_path: Path, model: Path, info: Path, name: str, **fields) -> Path:
    data = {"stage": 3, "model": str(model), "output_dir": str(tmp_path / name),
            "data": {"dataset_info": str(info), "datasets": DATASETS}, "per_device_batch_size": 4,
            "lr": 3e-3, "max_steps": 16, "save_steps": 4, "logging_steps": 4, "seed": 0, "precision": "fp32",
            **fields}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _metrics(out: Path) -> dict[int, dict]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records]
    assert len(steps) == len(set(steps)), f"{out / 'metrics.jsonl'} repeats steps: {steps}"
    return {r["step"]: r for r in records}


def _ovis_train(*args: str) -> list[str]:
    return [sys.executable, "-m", "ovis", "train", "--no-progress", *args]


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_complete_checkpoint(toy_dir, data_info, tmp_path):
    _run_child(_ovis_train("--config", str(_yaml(tmp_path, toy_dir, data_info, "a"))))
    config = _yaml(tmp_path, toy_dir, data_info, "b")
    proc = subprocess.Popen(_ovis_train("--config", str(config)), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = tmp_path / "b" / "checkpoints" / "step-4" / ckpt.COMPLETE
    deadline = time.monotonic() + 300
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (tmp_path / "b" / "final").exists()
    assert ckpt.latest_checkpoint(tmp_path / "b" / "checkpoints").name.startswith("step-")
    _run_child(_ovis_train("--config", str(config), "--resume"))
    a, b = _metrics(tmp_path / "a"), _metrics(tmp_path / "b")
    assert sorted(b) == list(range(1, 17))
    for step in range(1, 17):
        assert b[step]["sample_ids"] == a[step]["sample_ids"], step
        assert b[step]["loss"] == pytest.approx(a[step]["loss"], rel=1e-5), step
    wa, wb = _weights(tmp_path / "a" / "final"), _weights(tmp_path / "b" / "final")
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(not (VENV_BIN / "torchrun").exists(), reason="torchrun not installed")
def test_two_processes_zero2_and_zero3_agree(toy_dir, data_info, tmp_path):
    results = {}
    for stage in ("zero2", "zero3"):
        config = _yaml(tmp_path, toy_dir, data_info, stage, deepspeed=stage, max_steps=6, save_steps=3)
        _run_child([str(VENV_BIN / "torchrun"), "--nproc_per_node", "2", "-m", "ovis", "train", "--no-progress",
                    "--config", str(config)], cwd=REPO)
        results[stage] = _metrics(tmp_path / stage)
        state = json.loads((tmp_path / stage / "checkpoints" / "step-6" / ckpt.STATE_FILE).read_text())
        assert state["world_size"] == 2
        ovis.load(tmp_path / stage / "final")
    ids = results["zero2"][1]["sample_ids"]
    assert len(ids) == 8 and len(set(ids)) == 8  # two ranks x 4 samples, no overlap
    for step in range(1, 7):
        assert results["zero3"][step]["loss"] == pytest.approx(results["zero2"][step]["loss"], rel=1e-4)
    a, b = _weights(tmp_path / "zero2" / "final"), _weights(tmp_path / "zero3" / "final")
    for key in a:  # reductions run in another order: Adam can turn 1e-7 apart into 1e-5 apart
        torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-4)


# -- resume: damaged checkpoints, metrics after a resume, no unpickling -------------------------
def test_resume_passes_over_a_damaged_newest_checkpoint(toy_dir, data_info, tmp_path, one_thread, caplog):
    config = _config(toy_dir, data_info, tmp_path / "run", deepspeed=None)
    reference = _run(config)
    root = tmp_path / "run" / "checkpoints"
    manifest = json.loads((root / "step-6" / ckpt.MANIFEST).read_text())["files"]
    assert {"trainer_state.json", "rng_state_0.pt", "engine/torch_engine.pt"} <= set(manifest)
    engine_file = root / "step-6" / "engine" / "torch_engine.pt"
    with open(engine_file, "r+b") as handle:  # truncated, as a crash or a full disk leaves it
        handle.truncate(engine_file.stat().st_size // 2)
    caplog.set_level("WARNING", logger="ovis.train")
    resumed = _run(config.model_copy(update={"max_steps": 6}), resume=True)
    assert [r["step"] for r in resumed.records] == [4, 5, 6]  # from step-3, the newest that verifies
    assert any("step-6" in m and "engine/torch_engine.pt" in m and "damaged" in m for m in caplog.messages)
    for ours, theirs in zip(resumed.records, reference.records[3:], strict=True):
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5)


def test_no_verified_checkpoint_is_an_input_error_and_old_ones_count(tmp_path, caplog):
    root = tmp_path / "checkpoints"
    for step in (2, 4):
        path = root / f"step-{step}"
        (path / "engine").mkdir(parents=True)
        (path / "engine" / "state.pt").write_bytes(b"x" * 100)
        (path / ckpt.STATE_FILE).write_text("{}")
        ckpt.write_manifest(path)
        (path / ckpt.COMPLETE).write_text("")
    assert ckpt.resume_point(tmp_path, resume=True) == root / "step-4"
    (root / "step-4" / "engine" / "state.pt").write_bytes(b"y" * 100)  # same size, other bytes
    (root / "step-2" / "engine" / "state.pt").unlink()
    with pytest.raises(InputFileError, match=r"step-4: engine/state.pt differs .*step-2: engine/state.pt is missing"):
        ckpt.resume_point(tmp_path, resume=True)
    # A checkpoint from before manifests: used, with a warning that it was not verified.
    (root / "step-4" / ckpt.MANIFEST).unlink()
    caplog.set_level("WARNING", logger="ovis.train")
    assert ckpt.resume_point(tmp_path, resume=True) == root / "step-4"
    assert any("unverified" in m for m in caplog.messages)


def test_resumed_run_reports_each_step_once(toy_dir, data_info, tmp_path, one_thread):
    class Killed(Exception):
        pass

    def kill_after_step_5(step, record):
        if step == 5:
            raise Killed

    config = _config(toy_dir, data_info, tmp_path / "run", deepspeed=None, logging_steps=1)
    with pytest.raises(Killed):  # the run dies after its step-3 checkpoint, having logged 4 and 5
        _run(config, on_step_end=kill_after_step_5)
    metrics = tmp_path / "run" / "metrics.jsonl"
    with open(metrics, "a") as handle:
        handle.write('{"step": 6, "lo')  # cut short by the kill
    _run(config, resume=True)
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]


def test_resume_never_unpickles_the_rng_state(toy_dir, data_info, tmp_path, one_thread):
    config = _config(toy_dir, data_info, tmp_path / "run", deepspeed=None, max_steps=3)
    _run(config)
    state = torch.load(tmp_path / "run" / "checkpoints" / "step-3" / "rng_state_0.pt", weights_only=True)
    ckpt.set_rng_state(state)  # what ovis saves loads with weights_only=True
    marker = tmp_path / "pwned"
    path = tmp_path / "run" / "checkpoints" / "step-3"
    torch.save(_Planted(str(marker)), path / "rng_state_0.pt")
    ckpt.write_manifest(path)  # whoever can plant a file can rewrite the manifest too
    with pytest.raises(InputFileError, match="rng_state_0.pt is not an RNG state ovis wrote.*not unpickled"):
        Trainer(config.model_copy(update={"max_steps": 6}), resume=True, progress=False).setup()
    assert not marker.exists()


class _Planted:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_rng_files_of_older_versions_still_load_without_unpickling_code(tmp_path):
    import random

    import numpy as np

    path = tmp_path / "rng_state_0.pt"
    torch.save({"python": random.getstate(), "torch": torch.get_rng_state(), "numpy": np.random.get_state()}, path)
    expected = (random.random(), np.random.rand(), torch.rand(1))
    ckpt.set_rng_state(ckpt.load_rng_state(path))
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(1), expected[2])


def test_attn_implementation_is_chosen_for_the_hardware(monkeypatch):
    from ovis.train import attention

    monkeypatch.setattr(attention, "flash_attention_available", lambda: True)
    assert attention.choose_attention("auto", on_cuda=True) == "flash_attention_2"
    assert attention.choose_attention("auto", on_cuda=False) is None  # the model's own (sdpa)
    assert attention.choose_attention("eager", on_cuda=False) == "eager"
    with pytest.raises(ConfigError, match="flash_attention_2 needs a CUDA GPU"):
        attention.choose_attention("flash_attention_2", on_cuda=False)
    monkeypatch.setattr(attention, "flash_attention_available", lambda: False)
    assert attention.choose_attention("auto", on_cuda=True) is None
    with pytest.raises(ConfigError, match="needs the flash-attn package"):
        attention.choose_attention("flash_attention_2", on_cuda=True)


def test_a_run_trains_with_the_attention_it_names_and_exports_without_it(toy_dir, data_info, tmp_path):
    trainer = _run(_config(toy_dir, data_info, tmp_path / "run", deepspeed=None, max_steps=2,
                           attn_implementation="eager"))
    assert trainer.model.llm.config._attn_implementation == "eager"
    # A training choice, not the model's: the exported model loads with its default attention.
    model, _ = ovis.load(tmp_path / "run" / "final")
    assert model.llm.config._attn_implementation == "sdpa"


def test_deepspeed_on_a_cpu_starts_without_compiling_its_shm_kernel(tmp_path):
    """DeepSpeed's CPU backend would build a C++ all-reduce kernel (minutes, and a compiler) that
    training never uses: starting the process group must not build it."""
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext"), "CUDA_VISIBLE_DEVICES": ""}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    code = ("from ovis.train.distributed import join_deepspeed_group\n"
            "p = join_deepspeed_group()\n"
            "import deepspeed.comm.comm as c\n"
            "print(p.world_size, c.cdb.shm_comm_op)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-2:] == ["1", "None"], proc.stdout
    assert not (tmp_path / "ext").exists() or not any((tmp_path / "ext").iterdir())
