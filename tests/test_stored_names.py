"""A plugin backbone that transformers saves under other names than its modules have (or converts
further on load) loads, shape-checks and trains as ``from_pretrained`` loads it (ovis.model.stored_names)."""

from __future__ import annotations

import json
import logging
import os
import struct
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import ovis
from ovis.model.directory_check import ShapeMismatchError
from ovis.ports import free_port
from tests import hf_vit_plugin


@pytest.fixture
def hf_vit(register_plugin):
    hf_vit_plugin._register_fused_mapping()
    register_plugin("hf-vit-test", hf_vit_plugin.Plugin())


def _composed(vit: str, out: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model, processor = ovis.compose(vit=vit, llm="qwen-toy", visual_vocab_size=32)
    with torch.no_grad():  # every weight off its initial value (norms included)
        for param in model.parameters():
            param.add_(0.01 * torch.randn_like(param))
    return ovis.save(model, processor, out), {k: v.clone() for k, v in model.state_dict().items()}


def _stored(directory: Path) -> list[str]:
    with (directory / "model.safetensors").open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        return [n for n in json.loads(handle.read(length)) if n != "__metadata__"]


def _assert_equal(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> None:
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key].to(got[key].dtype), got[key]), key


def test_a_renamed_backbone_streams_under_the_models_names(hf_vit, tmp_path):
    from ovis.train.model_loading import load_streamed

    directory, expected = _composed("hf-vit-renamed", tmp_path / "m")
    stored = _stored(directory)
    if "visual_tokenizer.backbone.encoder.layers.0.attention.q_proj.weight" in stored:
        pytest.skip("this transformers saves ViTModel under its module names: nothing is renamed")
    assert "visual_tokenizer.backbone.encoder.encoder.layer.0.attention.attention.query.weight" in stored
    for dtype in (torch.float32, torch.bfloat16):
        _assert_equal(expected, load_streamed(directory, dtype=dtype).state_dict())


def test_a_tensor_converted_on_load_goes_through_from_pretrained(hf_vit, tmp_path, caplog):
    from ovis.train.model_loading import load_streamed

    directory, expected = _composed("hf-vit-fused", tmp_path / "m")
    assert "visual_tokenizer.backbone.encoder.layers.0.attention.qkv.weight" in _stored(directory)
    with caplog.at_level(logging.WARNING, logger="ovis.train"):
        model = load_streamed(directory, dtype=torch.float32)
    assert "more than a renaming" in caplog.text and "attention.qkv" in caplog.text
    _assert_equal(expected, model.state_dict())


def test_the_shape_check_reads_a_renamed_tensor_under_the_models_name(hf_vit, tmp_path):
    from safetensors.torch import load_file, save_file

    directory, _ = _composed("hf-vit-renamed", tmp_path / "m")
    name = "visual_tokenizer.backbone.encoder.encoder.layer.1.intermediate.dense.weight"
    tensors = load_file(str(directory / "model.safetensors"))
    if name not in tensors:
        pytest.skip("this transformers saves ViTModel under its module names: nothing is renamed")
    tensors[name] = torch.zeros(tensors[name].shape[0] + 1, tensors[name].shape[1])
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    from ovis.train.model_loading import load_streamed

    for load in (lambda: ovis.load(directory), lambda: load_streamed(directory, dtype=torch.float32)):
        with pytest.raises(ShapeMismatchError, match=r"intermediate\.dense\.weight' has shape \[65, 32\].*\[64, 32\]"):
            load()


def test_training_starts_from_a_renamed_backbone(hf_vit, tmp_path):
    """What a plugin author met: stage 1 from a composed model whose ViT transformers renames."""
    from ovis.data.synth import SynthSpec, write_synthetic_dataset
    from ovis.train import TrainConfig, Trainer

    directory, _ = _composed("hf-vit-renamed", tmp_path / "m")
    info = write_synthetic_dataset(tmp_path / "data", SynthSpec(train_images=4, eval_images=1), progress=False)
    config = TrainConfig.model_validate(
        {
            "stage": 1, "model": str(directory), "output_dir": str(tmp_path / "run"), "precision": "fp32",
            "data": {"dataset_info": str(info), "datasets": ["synth-conversations"]},
            "per_device_batch_size": 2, "max_steps": 2, "save_steps": 100, "logging_steps": 1, "seed": 0,
        }
    )
    Trainer(config, progress=False).run()
    trained, _ = ovis.load(tmp_path / "run" / "final")
    composed, _ = ovis.load(directory)
    vit = "visual_tokenizer.backbone.encoder.layers.0.attention.q_proj.weight"
    assert torch.equal(trained.state_dict()[vit], composed.state_dict()[vit])  # frozen at stage 1, loaded right
    head = "visual_tokenizer.head.0.weight"
    assert not torch.equal(trained.state_dict()[head], composed.state_dict()[head])


def _partitioned_on_rank(rank: int, port: int, directory: str, out: str) -> None:
    from tests.test_zero3_loading import _load_on_rank

    hf_vit_plugin.register()
    _load_on_rank(rank, port, directory, "fp32", out)


@pytest.mark.slow
@pytest.mark.parametrize("vit", ["hf-vit-renamed", "hf-vit-fused"])
def test_zero3_loads_such_a_backbone_partitioned_as_from_pretrained_does(hf_vit, tmp_path, vit):
    from tests.test_zero3_loading import WORLD, _check

    directory, _ = _composed(vit, tmp_path / "m")
    out = tmp_path / "out"
    out.mkdir()
    os.environ.pop("MASTER_PORT", None)
    mp.spawn(_partitioned_on_rank, args=(free_port(), str(directory), str(out)), nprocs=WORLD, join=True)
    _check([json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)], "fp32")
