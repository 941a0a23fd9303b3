"""benchmarks/train_throughput.py: its analytic model-FLOP count against torch's FlopCounterMode
over one real training pass of a tiny model (per stage), the depth override, and one tiny run end
to end."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import ovis
from ovis.train.config import STAGE_DEFAULTS
from ovis.train.modules import apply_train_modules
from ovis.train.step import TrainStep


@pytest.fixture(scope="module")
def bench(repo_script):
    yield repo_script("benchmarks/train_throughput.py")
    sys.modules.pop("train_throughput", None)


def _toy(stage: int):
    torch.manual_seed(0)
    model, processor = ovis.compose(vit="clip-toy", llm="qwen-toy", visual_vocab_size=256)
    apply_train_modules(model, STAGE_DEFAULTS[stage]["train_modules"], reinit_last_block=stage == 1)
    # Plain autograd everywhere, so that every product is an aten matmul the counter sees once: the
    # naive visual path (the fused one recomputes the head logits backward: not model FLOPs) and
    # eager attention (the CPU's fused SDPA kernel is not in torch's FLOP table).
    model.config.visual_path = "naive"
    model.llm.set_attn_implementation("eager")
    model.backbone.vision_model.set_attn_implementation("eager")
    return model, processor


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_flop_count_matches_torch_flop_counter(bench, stage):
    model, processor = _toy(stage)
    # Equal lengths: the batch has no padding, so what runs is exactly the samples' own work.
    data = bench.SyntheticSamples(processor, 2, (40, 40), 0.5, model.config.llm_config.vocab_size)
    samples = [data[i] for i in range(len(data))]
    batch = processor.collate(samples)
    step = TrainStep(model, image_size=model.backbone.spec.image_size, dummy_visual=False)
    with FlopCounterMode(display=False) as counter:
        loss, _ = step(**batch)
        loss.backward()
    measured = counter.get_total_flops()
    plan = bench.flop_plan(model)
    counted = sum(plan.sample_flops(*data.shape(i))["model"] for i in range(len(data)))
    assert counted == pytest.approx(measured, rel=0.02)


def test_frozen_parts_without_a_trained_part_upstream_have_no_backward(bench):
    model, _ = _toy(1)
    units = {u.name: u for u in bench.flop_plan(model).units}
    assert not units["vit_block_0"].backward  # stage 1: frozen, nothing trained before it
    last = f"vit_block_{len(model.backbone.blocks()) - 1}"
    assert units[last].input_grad and units[last].trainable_macs == units[last].macs
    assert units["llm_layer_0"].input_grad and units["llm_layer_0"].trainable_macs == 0
    assert not units["vit_patch_embed"].input_grad


def test_llava_anchor_is_in_the_expected_range(bench):
    anchor = bench.llava_anchor(300)
    # 6 x 13B x ~840 positions ~ 6.6e13 FLOP per sample: ~25% MFU at 1.16 samples/s on 312 TFLOP/s.
    assert 6.0e13 < anchor["flops_per_sample"] < 7.5e13
    assert anchor["samples_per_s_per_gpu"] == pytest.approx(1.155, abs=0.01)
    assert 0.2 < anchor["mfu"] < 0.3
    assert bench.llava_anchor(600)["mfu"] > anchor["mfu"]


def test_one_tiny_run_end_to_end(bench, tmp_path, capsys):
    torch.manual_seed(0)
    model_dir = tmp_path / "model"
    ovis.compose(vit="clip-toy", llm="qwen-toy", visual_vocab_size=256, out=model_dir)
    out = tmp_path / "result.json"
    argv = [
        "--toy",
        "--model-dir",
        str(model_dir),
        "--work",
        str(tmp_path / "work"),
        "--zero",
        "none",
        "--precision",
        "fp32",
        "--batch",
        "2",
        "--text-tokens",
        "8-24",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--peak",
        "1e11",
        "--json",
        str(out),
    ]
    assert bench.main(argv) == 0
    report = json.loads(out.read_text())
    (result,) = report["results"]
    assert result["steps"] == 2 and result["engine"] == "torch" and result["precision"] == "fp32"
    assert result["samples_per_s"] > 0 and result["tokens_per_s"] > result["samples_per_s"]
    assert 0 < result["cpu_seconds"] and result["samples_per_cpu_s"] > 0
    assert 0 < result["mfu"] == pytest.approx(result["model_flops_per_s"] / 1e11)
    assert 0 <= result["padding_fraction"] < 1  # lengths 8-24 in a batch of 2: some padding, not all
    printed = capsys.readouterr().out
    assert "MFU" in printed and "LLaVA-1.5 anchor" in printed


def test_depth_override_keeps_the_width_and_names_bad_depths(bench):
    from ovis.plugin_host import get_host

    host = bench.DepthHost(get_host(), vit_layers=3, llm_layers=2, tokenizer=None)
    model, _ = ovis.compose("clip", "llama3-8b", visual_vocab_size=4096, dry_run=True, host=host)
    assert len(model.llm.model.layers) == 2 and len(model.backbone.blocks()) == 3
    assert model.llm.config.hidden_size == 4096 and model.llm.config.intermediate_size == 14336
    assert host.llm("llama3-8b").spec.tokenizer == "offline:llama3"  # the hub one is not reachable
    assert host.llm("llama3-8b").spec.weights is None
    with pytest.raises(SystemExit, match="--llm-layers 40: preset 'llama3-8b' has 32 layers"):
        bench.DepthHost(get_host(), vit_layers=None, llm_layers=40, tokenizer=None).llm("llama3-8b")
