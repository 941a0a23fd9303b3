"""The high-resolution synthetic variant and training on the tiled layout.

``SynthSpec(**HIRES)`` draws 256 x 128 scenes with objects 5-8 px across: squeezed into the toy
ViT's one padded 64 px square (the v1 layout) an object keeps a pixel or two of its colour; cut
into the tiled layout's 2 x 4 grid of full-scale tiles it keeps dozens. Measured here on the
processors' own pixels, and the three training stages are run on the tiled layout with that data.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from PIL import Image

import ovis
from ovis.cli import main
from ovis.data.synth import BACKGROUND, COLOURS, HIRES, SHAPES, SynthSpec, Thing, draw_scene, write_synthetic_dataset
from ovis.errors import ConfigError, OutputExistsError

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "hires"


@pytest.fixture(scope="module")
def processors():
    """The toy pair's processors in the v1 layout and the tiled layout the benchmark trains."""
    _, v1 = ovis.compose(vit="clip-toy", llm="qwen-toy", visual_vocab_size=64)
    _, tiled = ovis.compose(vit="clip-toy", llm="qwen-toy", visual_vocab_size=64, max_partition=9, hidden_stride=2)
    return v1, tiled


def colour_pixels(views: torch.Tensor, colour: str, spec) -> int:
    """The most pixels of any one view that still show ``colour``: within a quarter of the
    colour's distance from the background (a pixel blended mostly with background does not count)."""
    mean, std = torch.tensor(spec.mean).view(3, 1, 1), torch.tensor(spec.std).view(3, 1, 1)
    target = torch.tensor(COLOURS[colour], dtype=torch.float).view(3, 1, 1)
    tolerance = 0.25 * (target - torch.tensor(BACKGROUND, dtype=torch.float).view(3, 1, 1)).norm()
    pixels = (views * std + mean) * 255
    return max(int(((view - target).norm(dim=0) < tolerance).sum()) for view in pixels)


def test_hires_objects_lose_their_pixels_in_one_square_and_keep_them_in_tiles(processors):
    v1, tiled = processors
    spec = v1.image_processor.spec
    rng = random.Random(0)
    seen_v1, seen_tiled = [], []
    for k in range(48):
        colour, shape = list(COLOURS)[k % len(COLOURS)], SHAPES[k % len(SHAPES)]
        image = draw_scene([Thing(shape, colour, k % 4)], HIRES["image_shape"], rng, object_px=HIRES["object_px"])
        assert image.size == (256, 128)
        views = tiled.tiler(image)
        assert views.grid == (2, 4) and views.pixel_values.shape[0] == 9  # 8 tiles at full scale + global
        seen_v1.append(colour_pixels(v1.image_processor.preprocess_one(image)[None], colour, spec))
        seen_tiled.append(colour_pixels(views.pixel_values, colour, spec))
    # One padded square: 256 px -> 64 px, an object of 5-8 px -> 1-2 px, at most a few pixels keep its colour.
    assert max(seen_v1) <= 4 and sum(seen_v1) / len(seen_v1) <= 2, seen_v1
    # A full-scale tile keeps the object whole: ~20-70 pixels of its colour, a shape to read.
    assert min(seen_tiled) >= 15, seen_tiled
    assert all(t >= 8 * max(1, s) for s, t in zip(seen_v1, seen_tiled, strict=True))


def test_default_scenes_are_drawn_as_before():
    """The square layout draws the same pixels whether its side comes as an int or a (w, h) pair,
    and the hi-res options default to off (the quick-start's data is unchanged)."""
    scene = [Thing("triangle", "red", 0), Thing("cross", "blue", 3)]
    a = draw_scene(scene, 64, random.Random(3))
    b = draw_scene(scene, (64, 64), random.Random(3))
    assert a.tobytes() == b.tobytes()
    assert SynthSpec().canvas == (64, 64) and SynthSpec().object_px is None
    # Small objects on the default canvas are small: the option reaches the drawing.
    small = draw_scene(scene, 64, random.Random(3), object_px=(4, 4))
    lit = sum(1 for p in small.get_flattened_data() if p != BACKGROUND)
    assert 0 < lit < sum(1 for p in a.get_flattened_data() if p != BACKGROUND) / 4


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"image_shape": (256, 4)}, "image_shape"),
        ({"image_shape": (256,)}, "image_shape"),
        ({"object_px": (9, 5)}, "object_px"),
        ({"image_shape": (64, 32), "object_px": (4, 20)}, "<= 16"),
        ({"object_px": (0, 3)}, "object_px"),
    ],
)
def test_bad_hires_specs_are_refused(fields, message):
    with pytest.raises(ConfigError, match=message):
        SynthSpec(**fields)


def test_quickstart_data_made_before_the_hires_options_is_still_reused(tmp_path):
    """A quick-start data directory whose key lacks ``image_shape``/``object_px`` (recorded before
    they existed, or with them unset) is the same data: the run reuses it instead of refusing it.
    Data of another generator version is not (tests/test_quickstart.py)."""
    from dataclasses import asdict

    from ovis.data.synth import GENERATOR_VERSION
    from ovis.quickstart import KEY_FILE, _Run

    spec = SynthSpec(train_images=4, eval_images=2)
    old_key = {k: v for k, v in asdict(spec).items() if k not in ("image_shape", "object_px")}
    old_key["generator"] = GENERATOR_VERSION
    data = tmp_path / "data"
    data.mkdir()
    (data / "dataset_info.json").write_text("{}")
    (data / KEY_FILE).write_text(json.dumps(old_key))
    _Run(tmp_path, blind=False, seed=0, progress=False, log=lambda _: None).make_data(spec)
    assert not (data / "images").exists()  # reused, not redrawn
    # A hi-res spec is other data: refused, naming what differs.
    hires = SynthSpec(train_images=4, eval_images=2, **HIRES)
    with pytest.raises(OutputExistsError, match=r"\(image_shape, object_px differ\)"):
        _Run(tmp_path, blind=False, seed=0, progress=False, log=lambda _: None).make_data(hires)


def test_cli_data_synth_hires_and_explicit_shape(tmp_path, capsys):
    assert (
        main(
            [
                "data",
                "synth",
                "--out",
                str(tmp_path / "h"),
                "--hires",
                "--train-images",
                "3",
                "--eval-images",
                "1",
                "--text-scenes",
                "1",
                "--compositional-images",
                "0",
            ]
        )
        == 0
    )
    assert Image.open(tmp_path / "h" / "images" / "train-000000.png").size == (256, 128)
    spec = json.loads((tmp_path / "h" / "synth_spec.json").read_text())
    assert spec["image_shape"] == [256, 128] and spec["object_px"] == [5.0, 8.0]
    assert (
        main(
            [
                "data",
                "synth",
                "--out",
                str(tmp_path / "e"),
                "--image-shape",
                "96x48",
                "--object-px",
                "3-6",
                "--train-images",
                "2",
                "--eval-images",
                "1",
                "--text-scenes",
                "1",
                "--compositional-images",
                "0",
            ]
        )
        == 0
    )
    assert Image.open(tmp_path / "e" / "images" / "eval-000002.png").size == (96, 48)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["data", "synth", "--out", str(tmp_path / "x"), "--image-shape", "96by48"])
    assert exit_.value.code == 2 and "--image-shape: '96by48': expected two int numbers" in capsys.readouterr().err
    # Objects too big for the canvas: the spec's error, one line.
    assert main(["data", "synth", "--out", str(tmp_path / "y"), "--hires", "--object-px", "20-70"]) == 2
    assert "object_px must be (min, max) with 0 < min <= max <= 64" in capsys.readouterr().err


def test_all_three_stages_train_on_tiled_hires_images_and_the_loss_falls(tmp_path):
    """Stages 1, 2 and 3 of configs/hires/ on the tiled layout, each for a few steps over one fixed
    batch (the whole tiny dataset), so the loss of one step is comparable with the next."""
    from ovis.train import Trainer, load_train_config

    data = write_synthetic_dataset(
        tmp_path / "data",
        SynthSpec(train_images=6, eval_images=1, text_scenes=1, compositional_images=0, curriculum=(), **HIRES),
        progress=False,
    )
    torch.manual_seed(0)
    _, processor = ovis.compose(
        vit="clip-toy",
        llm="qwen-toy",
        visual_vocab_size=256,
        max_partition=9,
        hidden_stride=2,
        out=tmp_path / "composed",
    )
    sample = processor.encode(
        [{"role": "user", "content": "<image>\nhi"}], [tmp_path / "data" / "images" / "train-000000.png"]
    )
    assert sample.grids == [(2, 4)] and sample.pixel_values.shape[0] == 9
    previous = tmp_path / "composed"
    for stage, datasets in (
        ("stage1", "[synth-captions]"),
        ("stage2", "[synth-captions]"),
        ("stage3", "[synth-conversations]"),
    ):
        config = load_train_config(
            CONFIGS / f"{stage}.yaml",
            [
                f"model={previous}",
                f"output_dir={tmp_path / stage}",
                f"data.dataset_info={data}",
                f"data.datasets={datasets}",
                "max_steps=4",
                "per_device_batch_size=6",
                "lr=2e-3",
                "warmup_ratio=0",
                "lr_scheduler=constant",
                "precision=fp32",
                "num_workers=0",
                "logging_steps=1",
            ],
        )
        Trainer(config, progress=False).run()
        losses = [json.loads(line)["loss"] for line in (tmp_path / stage / "metrics.jsonl").read_text().splitlines()]
        assert len(losses) == 4 and losses[-1] < losses[0], (stage, losses)
        previous = tmp_path / stage / "final"
    trained, _ = ovis.load(previous)
    assert trained.config.image_layout == "tiled" and trained.config.hidden_stride == 2


def test_tiling_detail_textures_vanish_in_one_square_and_survive_in_tiles(processors, repo_script):
    """benchmarks/tiling_detail.py's premise: its four textures share a mean colour, so the v1
    layout's shrunk square cannot tell them apart while full-scale tiles can."""
    bench = repo_script("benchmarks/tiling_detail.py")
    v1, tiled = processors
    left_v1, left_tiled = [], []
    for k, colour in enumerate(COLOURS):
        for pattern in bench.PATTERNS[1:]:
            textured = bench.draw_detail(colour, pattern, random.Random(k))
            plain = bench.draw_detail(colour, "plain", random.Random(k))  # same place and size
            assert textured.size == bench.CANVAS and textured.getcolors(1 << 16) != plain.getcolors(1 << 16)
            left_v1.append(bench.texture_visibility(v1, textured, plain))
            left_tiled.append(bench.texture_visibility(tiled, textured, plain))
    # Normalised units (CLIP's std is ~0.27, so 1/255 of a pixel is ~0.015): v1 keeps under four
    # levels of 255 of any texture; a tile keeps the full swing between the two shades.
    assert max(left_v1) < 0.06, left_v1
    assert min(left_tiled) > 0.5, left_tiled
