"""A composed model in the tiled layout (Ovis 1.6 / Ovis2): tiles, merged patches, five indicators,
end to end from a large image to generated ids, through save/load and the command line."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image, ImageDraw

import ovis
from ovis.cli import main
from ovis.errors import ConfigError, UsageError
from ovis.model import IGNORE_INDEX, IMAGE_TOKEN_ID
from ovis.model.merging import INDICATOR_IDS, ImageCountError
from ovis.tiling import block_length, image_block, num_views

V = 256


def _big_image(width: int = 300, height: int = 130) -> Image.Image:
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for i in range(0, width, 23):
        draw.rectangle((i, (i * 7) % height, i + 9, (i * 7) % height + 9), fill=(i % 256, 80, 200))
    return image


@pytest.fixture(scope="module")
def tiled():
    torch.manual_seed(0)
    model, processor = ovis.compose(
        vit="clip-tiny", llm="qwen2.5-tiny", visual_vocab_size=V, max_partition=4, hidden_stride=2
    )
    return model.eval(), processor


def _conv(text: str, answer: str | None = None):
    conv = [{"role": "user", "content": text}]
    return conv + ([{"role": "assistant", "content": answer}] if answer else [])


def test_the_tiled_layout_is_in_the_config_and_the_shapes(tiled):
    model, processor = tiled
    config = model.config
    assert (config.image_layout, config.hidden_stride, config.max_partition) == ("tiled", 2, 4)
    assert (config.covering_threshold, config.tile_resize) == (0.9, "pad")
    # clip-tiny: 64 px, patch 16 -> 4 x 4 patches of width 64, merged 2 x 2 -> 4 tokens of width 256
    assert model.tokens_per_tile == config.tokens_per_tile == 4 == processor.tokens_per_tile
    linear, norm = model.visual_tokenizer.head
    assert linear.in_features == 4 * 64 and linear.out_features == V - 5 == norm.normalized_shape[0]
    assert model.vte.weight.shape[0] == V
    assert processor.tiling.max_partition == 4
    assert processor.max_length == config.multimodal_max_length == 8192  # v1: 2048; a 9-tile image needs ~2600


def test_a_large_image_becomes_tiles_indicators_and_merged_tokens(tiled):
    model, processor = tiled
    image = _big_image()
    sample = processor.encode(_conv("<image>\nWhat is drawn?", "Squares."), [image])
    grid = sample.grids[0]
    assert grid[0] * grid[1] > 1  # a 300 x 130 image at 64 px needs several tiles
    start = sample.input_ids.index(INDICATOR_IDS[0])
    block = image_block(grid, 4)
    assert sample.input_ids[start : start + len(block)] == block
    assert len(block) == block_length(grid, 4) == processor.image_positions(grid)
    assert all(label == IGNORE_INDEX for label in sample.labels[start : start + len(block)])
    assert sample.pixel_values.shape == (num_views(grid), 3, 64, 64) and sample.num_images == 1

    batch = processor.collate([sample])
    with torch.no_grad():
        embeds = model.embed_inputs(batch["input_ids"], batch["pixel_values"])
        views = model.encode_images(batch["pixel_values"])
        indicators = model.indicator_embeddings()
    ids = batch["input_ids"][0]
    assert views.shape == (num_views(grid), 4, 64)
    # tile positions hold the views' tokens in order, indicator k holds the table's row V - 5 + k
    torch.testing.assert_close(embeds[0][ids == IMAGE_TOKEN_ID], views.reshape(-1, 64), rtol=0, atol=0)
    for k, indicator in enumerate(INDICATOR_IDS):
        where = ids == indicator
        if where.any():
            torch.testing.assert_close(embeds[0][where], model.vte.weight[V - 5 + k].expand(int(where.sum()), -1))
    torch.testing.assert_close(indicators, model.vte.weight[-5:])


def test_forward_backward_and_generate_end_to_end(tiled):
    model, processor = tiled
    model.train()
    image = _big_image()
    samples = [
        processor.encode(_conv("<image>\nWhat is drawn?", "Squares."), [image]),
        processor.encode(_conv("No image here.", "Fine."), []),
        processor.encode(_conv("<image> and <image>", "Two."), [_big_image(130, 300), Image.new("RGB", (40, 40))]),
    ]
    batch = processor.collate(samples)
    out = model(**batch)
    assert torch.isfinite(out.loss)
    model.zero_grad()
    out.loss.backward()
    grad = model.vte.weight.grad
    used = {k for k, i in enumerate(INDICATOR_IDS) if (batch["input_ids"] == i).any()}
    for k in range(5):  # only the indicators the batch holds are learned
        assert (grad[V - 5 + k].abs().sum() > 0) == (k in used), k
    assert model.visual_tokenizer.head[0].weight.grad.abs().sum() > 0
    model.eval()
    prompt = processor([_conv("<image>\nWhat is drawn?")], [[image]])
    new = model.generate(
        prompt["input_ids"], prompt["pixel_values"], prompt["attention_mask"], max_new_tokens=3, do_sample=False
    )
    assert new.shape == (1, 3)


def test_the_fused_path_equals_the_naive_path_with_merged_tokens(tiled):
    model, processor = tiled
    batch = processor.collate([processor.encode(_conv("<image>\nWhat?", "This."), [_big_image()])])
    results = []
    for path in ("naive", "fused"):
        model.config.visual_path = path
        model.zero_grad()
        out = model(**batch)
        out.loss.backward()
        results.append(
            (out.logits.detach(), model.vte.weight.grad.clone(), model.visual_tokenizer.head[0].weight.grad.clone())
        )
    model.config.visual_path = "fused"
    for ref, got in zip(results[0], results[1], strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_saved_and_loaded_keep_the_layout_and_the_answers(tiled, tmp_path):
    model, processor = tiled
    ovis.save(model, processor, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert {
        k: config[k] for k in ("image_layout", "hidden_stride", "max_partition", "covering_threshold", "tile_resize")
    } == {
        "image_layout": "tiled",
        "hidden_stride": 2,
        "max_partition": 4,
        "covering_threshold": 0.9,
        "tile_resize": "pad",
    }
    loaded, loaded_processor = ovis.load(tmp_path / "m")
    assert loaded_processor.tiling == processor.tiling and loaded_processor.tokens_per_tile == 4
    prompt = [_conv("<image>\nWhat is drawn?")], [[_big_image()]]
    a, b = processor(*prompt), loaded_processor(*prompt)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["pixel_values"], b["pixel_values"])
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(**a).logits, model(**a).logits, rtol=0, atol=0)


def test_truncation_drops_whole_tiled_blocks(tiled):
    _, processor = tiled
    conv = [*_conv("<image> first", "red."), *_conv("<image> second", "blue " * 40)]
    images = [_big_image(), _big_image(200, 200)]
    full = processor.encode(conv, images)
    begins = [i for i, t in enumerate(full.input_ids) if t == INDICATOR_IDS[0]]
    ends = [i for i, t in enumerate(full.input_ids) if t == INDICATOR_IDS[-1]]
    saved = processor.max_length
    try:
        processor.max_length = begins[1] + 5  # inside the second block
        cut = processor.encode(conv, images, overflow="truncate")
        assert cut.input_ids == full.input_ids[: begins[1]] and cut.num_images == 1
        assert cut.pixel_values.shape[0] == num_views(full.grids[0])
        processor.max_length = ends[1] + 3  # past the second block: both kept
        cut = processor.encode(conv, images, overflow="truncate")
        assert cut.num_images == 2 and cut.input_ids == full.input_ids[: ends[1] + 3]
        assert cut.pixel_values.shape[0] == full.pixel_values.shape[0]
    finally:
        processor.max_length = saved


def test_tokens_from_another_layout_are_refused(tiled):
    model, processor = tiled
    batch = processor.collate([processor.encode(_conv("<image>\nWhat?"), [_big_image()], add_generation_prompt=True)])
    with pytest.raises(ImageCountError, match=r"the tokens hold \d+ view block\(s\) but \d+ view\(s\) were given"):
        model.embed_inputs(batch["input_ids"], batch["pixel_values"][:-1])


def test_v1_stays_the_default_and_refuses_tiling_options():
    model, processor = ovis.compose(vit="clip-tiny", llm="qwen2.5-tiny", visual_vocab_size=V)
    assert model.config.image_layout == "v1" and model.config.hidden_stride == 1
    assert processor.tiling is None and processor.num_image_tokens == 16 + 2
    with pytest.raises(UsageError, match="tiling options apply to image_layout 'tiled'"):
        ovis.compose(vit="clip-tiny", llm="qwen2.5-tiny", visual_vocab_size=V, image_layout="v1", max_partition=4)


def test_bad_layout_values_are_named():
    from ovis.model import OvisConfig

    with pytest.raises(ConfigError, match="image_layout must be one of v1, tiled"):
        OvisConfig(image_layout="grid")
    with pytest.raises(ConfigError, match="hidden_stride"):
        OvisConfig(hidden_stride=0)
    with pytest.raises(ConfigError, match="use_indicators must be true"):
        OvisConfig(image_layout="tiled", use_indicators=False)
    with pytest.raises(ConfigError, match="max_partition"):
        OvisConfig(image_layout="tiled", max_partition=0)


def test_cli_composes_a_tiled_model(tmp_path, capsys):
    out = tmp_path / "cli"
    assert (
        main(
            [
                "compose",
                "--vit",
                "clip-tiny",
                "--llm",
                "qwen2.5-tiny",
                "--visual-vocab-size",
                str(V),
                "--max-partition",
                "9",
                "--hidden-stride",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    config = json.loads((out / "config.json").read_text())
    assert (config["image_layout"], config["max_partition"], config["hidden_stride"]) == ("tiled", 9, 2)
    assert json.loads((out / "preprocessor_config.json").read_text())["tiling"]["max_partition"] == 9
    capsys.readouterr()
    assert (
        main(
            [
                "compose",
                "--vit",
                "clip-tiny",
                "--llm",
                "qwen2.5-tiny",
                "--dry-run",
                "--json",
                "--hidden-stride",
                "2",
                "--image-layout",
                "tiled",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["image_layout"] == "tiled" and report["tokens_per_tile"] == 4 and report["max_partition"] == 9
    assert (
        main(
            [
                "compose",
                "--vit",
                "clip-tiny",
                "--llm",
                "qwen2.5-tiny",
                "--dry-run",
                "--image-layout",
                "v1",
                "--max-partition",
                "4",
            ]
        )
        == 2
    )


@pytest.mark.parametrize(
    ("llm", "adapter", "layout"),
    [("gemma2-tiny", "structural", "tiled"), ("qwen2.5-tiny", "mlp", "tiled"), ("qwen2.5-tiny", "structural", "v1")],
)
def test_scaled_llms_the_mlp_adapter_and_merging_in_v1(llm, adapter, layout):
    """Gemma scales its text rows, so indicator rows are scaled too; the MLP adapter's table holds
    the five indicators alone; hidden_stride works in the v1 layout as well (4 tokens + 2)."""
    torch.manual_seed(0)
    model, processor = ovis.compose(
        vit="clip-tiny", llm=llm, visual_vocab_size=V, adapter=adapter, image_layout=layout, hidden_stride=2
    )
    model.eval()
    batch = processor([_conv("<image>\nWhat?")], [[_big_image()]])
    ids = batch["input_ids"][0]
    with torch.no_grad():
        embeds = model.embed_inputs(batch["input_ids"], batch["pixel_values"])
        new = model.generate(
            batch["input_ids"], batch["pixel_values"], batch["attention_mask"], max_new_tokens=2, do_sample=False
        )
    assert new.shape == (1, 2)
    scale = model.config.visual_embedding_scale
    if layout == "v1":
        assert processor.tiling is None and model.num_image_tokens == 4 + 2
        assert int((ids == IMAGE_TOKEN_ID).sum()) == 6
        return
    assert (scale != 1.0) == (llm == "gemma2-tiny")
    rows = model.vte.weight[-5:] if adapter == "structural" else model.vte.weight[:5]
    assert model.vte.weight.shape[0] == (V if adapter == "structural" else 5)
    where = ids == INDICATOR_IDS[0]
    torch.testing.assert_close(embeds[0][where][0], rows[0] * scale)


def test_topk_inference_covers_the_tiled_layout(tiled):
    model, processor = tiled
    batch = processor([_conv("<image>\nWhat?")], [[_big_image()]])
    with torch.no_grad():
        dense = model(**batch).logits
        model.config.visual_topk = V  # every word kept: the dense result up to summation order
        try:
            sparse = model(**batch).logits
        finally:
            model.config.visual_topk = None
    torch.testing.assert_close(sparse, dense, rtol=1e-4, atol=1e-5)


def test_merging_refuses_a_backbone_without_a_square_patch_grid(tiny_ovis, tiny_llm, monkeypatch):
    from ovis.model import OvisConfig, OvisForCausalLM

    backbone = tiny_ovis.backbone
    config = OvisConfig(**{**tiny_ovis.config.to_dict(), "hidden_stride": 2})
    assert OvisForCausalLM(config, llm=tiny_llm, backbone=backbone).tokens_per_tile == 4  # 4 x 4 patches
    monkeypatch.setattr(type(backbone), "num_patches", property(lambda self: 17))  # e.g. a class token kept
    with pytest.raises(ConfigError, match="yields 17 patches; use hidden_stride 1"):
        OvisForCausalLM(config, llm=tiny_llm, backbone=backbone)
