"""ovis.train: config, module selection, schedules, checkpoints, and DeepSpeed runs on the CPU
(ZeRO-2, ZeRO-3, LoRA, resume, a killed run, two processes) on the toy model pair."""

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
from ovis.cli import main
from ovis.train import TrainConfig, Trainer, apply_train_modules, build_deepspeed_config, load_train_config
from ovis.train import checkpoint as ckpt
from ovis.train.config import builtin_deepspeed_config
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
    """16 synthetic scenes (3 questions each), 4 text-only conversations, 1 record whose image is missing."""
    from ovis.data.synth import SynthSpec, write_synthetic_dataset

    root = tmp_path_factory.mktemp("data")
    info_path = write_synthetic_dataset(root, SynthSpec(train_images=16, eval_images=1), progress=False)
    text = [
        {"id": f"t{i}", "conversations": [{"from": "human", "value": "Say a number."},
                                          {"from": "gpt", "value": ("one", "two")[i % 2]}]}
        for i in range(4)
    ]
    (root / "text.json").write_text(json.dumps(text))
    bad = [{"id": "bad", "image": "missing.png",
            "conversations": [{"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": "x"}]}]
    (root / "bad.json").write_text(json.dumps(bad))
    info = json.loads(info_path.read_text())
    info["text"] = {"meta_file": "text.json", "data_format": "conversation"}
    info["bad"] = {"meta_file": "bad.json", "image_dir": "images", "data_format": "conversation"}
    info_path.write_text(json.dumps(info))
    return info_path


@pytest.fixture
def one_thread():
    """The CPU here is shared: one thread avoids OpenMP stalls and keeps timings steady."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


# -- config ---------------------------------------------------------------------------------------
def test_yaml_paths_stage_defaults_and_overrides(tmp_path, monkeypatch):
    cfg_dir = tmp_path / "configs"
    cfg_dir.mkdir()
    (cfg_dir / "s1.yaml").write_text(yaml.safe_dump({
        "stage": 1, "model": "../models/composed", "output_dir": "runs/s1",
        "data": {"dataset_info": "../data/dataset_info.json", "datasets": ["a"]},
    }))
    monkeypatch.chdir(tmp_path)
    config = load_train_config(cfg_dir / "s1.yaml", ["lr=5e-5", "data.datasets=[a, b]", "tau.end=0.1",
                                                     "deepspeed=zero3", "output_dir=elsewhere"])
    assert config.model == (tmp_path / "models" / "composed").resolve()  # against the YAML's directory
    assert config.data.dataset_info == (tmp_path / "data" / "dataset_info.json").resolve()
    assert config.output_dir == (tmp_path / "elsewhere").resolve()  # --set paths: against the CWD
    assert config.data.datasets == ["a", "b"] and config.lr == 5e-5 and config.tau.end == 0.1
    assert config.deepspeed == "zero3"
    # Stage-1 defaults (Ovis v1 recipe) unless set.
    assert config.train_modules == ["visual_tokenizer.head", "vte", "visual_tokenizer.re_init_layers"]
    assert config.reinit_last_block is True and config.warmup_ratio == 0.1
    stage3 = load_train_config(None, ["stage=3", "model=m", "output_dir=o"])
    assert stage3.train_modules == ["all"] and stage3.lr == 2e-5 and stage3.reinit_last_block is False
    # Stage 0 (not the paper's): the LLM alone, pre-trained on text.
    stage0 = load_train_config(None, ["stage=0", "model=m", "output_dir=o"])
    assert stage0.train_modules == ["llm"] and stage0.reinit_last_block is False
    with pytest.raises(ValueError, match="stage"):
        load_train_config(None, ["stage=4", "model=m", "output_dir=o"])


def test_unknown_keys_are_named_with_the_valid_ones(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"model": "m", "output_dir": "o", "data": {"datasetz": ["a"]}}))
    with pytest.raises(ValueError, match=r"'data\.datasetz'.*dataset_info, datasets, max_length"):
        load_train_config(path)
    with pytest.raises(ValueError, match=r"unknown config key 'learning_rate'; valid keys: .*\blr\b"):
        load_train_config(None, ["model=m", "output_dir=o", "learning_rate=1"])
    with pytest.raises(ValueError, match="has no sub-keys"):
        load_train_config(None, ["model=m", "output_dir=o", "lr.x=1"])
    with pytest.raises(ValueError, match="key=value"):
        load_train_config(None, ["lr"])


def test_bad_train_modules_token_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"'vision'.*valid: all, llm, visual_tokenizer"):
        load_train_config(None, ["model=m", "output_dir=o", "train_modules=[llm, vision]"])


def test_print_config(tmp_path, capsys):
    assert main(["train", "--set", "model=m", "--set", "output_dir=o", "--set", "lr=0.5", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["lr"] == 0.5 and printed["model"] == str(Path("m").resolve())


def test_deepspeed_auto_values_filled_and_conflicts_refused(tmp_path):
    config = load_train_config(None, ["model=m", "output_dir=o", "per_device_batch_size=4",
                                      "gradient_accumulation_steps=2", "lr=1e-3", "precision=fp32"])
    ds = build_deepspeed_config(config, world_size=2, hidden_size=256, on_cuda=False)
    assert ds["train_batch_size"] == 16 and ds["train_micro_batch_size_per_gpu"] == 4
    assert ds["gradient_accumulation_steps"] == 2 and ds["gradient_clipping"] == 1.0
    assert ds["optimizer"]["params"]["torch_adam"] is True and ds["optimizer"]["params"]["lr"] == 1e-3
    assert ds["bf16"]["enabled"] is False and ds["zero_optimization"]["stage"] == 2
    assert "auto" not in json.dumps(ds)
    cuda = build_deepspeed_config(config, world_size=1, hidden_size=256, on_cuda=True)["optimizer"]["params"]
    assert cuda["torch_adam"] is True and cuda["fused"] is True  # torch's fused CUDA AdamW: nothing to build
    # The JSON files in configs/deepspeed are the built-ins.
    for name in ("zero2", "zero3"):
        assert json.loads((REPO / "configs" / "deepspeed" / f"{name}.json").read_text()) == \
            builtin_deepspeed_config(name)
    explicit = builtin_deepspeed_config("zero2") | {"train_micro_batch_size_per_gpu": 8}
    (tmp_path / "ds.json").write_text(json.dumps(explicit))
    with pytest.raises(ValueError, match="train_micro_batch_size_per_gpu is 8 but the training config gives 4"):
        build_deepspeed_config(config.model_copy(update={"deepspeed": str(tmp_path / "ds.json")}),
                               world_size=1, hidden_size=256, on_cuda=False)
    (tmp_path / "sched.json").write_text(json.dumps(builtin_deepspeed_config("zero2") | {"scheduler": {}}))
    with pytest.raises(ValueError, match="scheduler"):
        build_deepspeed_config(config.model_copy(update={"deepspeed": str(tmp_path / "sched.json")}),
                               world_size=1, hidden_size=256, on_cuda=False)


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
    from ovis.train.trainer import TrainStep

    model, processor = ovis.load(toy_dir)
    apply_train_modules(model, ["visual_tokenizer", "vte"])
    sample = processor.encode([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])
    batch = DataCollator(processor)([sample])
    batch.pop("num_skipped")
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
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(config, progress=False).setup()


def test_resume_continues_with_the_same_data_and_losses(gumbel_dir, data_info, tmp_path, one_thread):
    # Gumbel sampling draws random numbers every step: equal losses mean the RNG was restored too.
    reference = _run(_config(gumbel_dir, data_info, tmp_path / "a", gradient_accumulation_steps=2))
    # A run that stopped after step 3: only its step-3 checkpoint (and a half-written step-6) exist.
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "a" / "checkpoints" / "step-3", tmp_path / "b" / "checkpoints" / "step-3")
    (tmp_path / "b" / "checkpoints" / "step-6.tmp").mkdir()
    resumed = _run(_config(gumbel_dir, data_info, tmp_path / "b", gradient_accumulation_steps=2), resume=True)
    assert [r["step"] for r in resumed.records] == [4, 5, 6]
    for ours, theirs in zip(resumed.records, reference.records[3:], strict=True):
        assert ours["sample_ids"] == theirs["sample_ids"]
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5)
    a, b = _weights(tmp_path / "a" / "final"), _weights(tmp_path / "b" / "final")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert not (tmp_path / "b" / "checkpoints" / "step-6.tmp").exists()


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


# -- subprocess runs (slow) ------------------------------------------------------------------------
#: set in this process by in-process training runs (a single-rank group whose port is still held);
#: a child must make its own group, not join that one
_DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _run_child(command: list[str], **kwargs) -> None:
    """Run a child to completion; on failure show the end of what it printed, not just its exit code."""
    proc = subprocess.run(command, env=_env(), capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, f"{' '.join(command)} exited {proc.returncode}:\n{proc.stderr[-4000:]}"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DIST_VARS}
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
    return {r["step"]: r for r in records}  # after a resume, a step's last record wins


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
