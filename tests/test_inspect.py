"""ovis.inspect and ``ovis inspect``: on a model whose backbone and head are set by hand (each patch's
feature is a one-hot of its colour, each colour's row of the head a chosen word), the per-token
words, boxes, entropies, usage counts and mutual information come out exactly as constructed, in
the v1 and the tiled layouts; the chunked computation equals a full softmax; the MLP adapter is
refused; the commands write their files and name bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image, ImageDraw

import ovis
from ovis.cli import main
from ovis.data.synth import BACKGROUND, COLOURS, Thing
from ovis.inspect import InspectError, measure_meaning, mutual_information_bits, patch_words, vocab_usage, word_stats
from ovis.inspect.meaning import entropy_bits, token_labels

V = 64  # visual vocabulary (V' = 62 words in the v1 layout, 59 tiled)
#: the colours the stub backbone tells apart: the synthetic scenes' background and objects, and the
#: grey a padded square's border un-normalises to
PALETTE = {"background": BACKGROUND, **COLOURS}
NAMES = list(PALETTE)
#: the word each colour fires (chosen so that no word is its colour's index)
WORD_OF = {name: 7 + 5 * k for k, name in enumerate(NAMES)}
LN_WEIGHT = 0.5  # a LayerNorm weight < 1: distributions that are not one-hot, with an exact entropy


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The shared 2-core machine runs these faster on one thread than on two contended ones.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _stub_backbone(model) -> None:
    """Replace the backbone's forward: each patch's feature is ``10 x`` the one-hot of the palette
    colour (or pad grey, the extra last index) nearest its mean pixel."""
    backbone = model.visual_tokenizer.backbone
    spec = backbone.spec.preprocess
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    palette = torch.tensor([*PALETTE.values(), tuple(round(255 * m) for m in spec.mean)], dtype=torch.float32) / 255
    side = math.isqrt(backbone.num_patches)
    width = backbone.feature_dim

    def forward(pixel_values: torch.Tensor) -> torch.Tensor:
        rgb = pixel_values.float() * std + mean
        batch, _, size, _ = rgb.shape
        patch = size // side
        means = rgb.reshape(batch, 3, side, patch, side, patch).mean(dim=(3, 5)).flatten(2).transpose(1, 2)
        nearest = torch.cdist(means, palette.expand(batch, -1, -1)).argmin(dim=-1)
        return torch.nn.functional.one_hot(nearest, width).float() * 10

    backbone.forward = forward


def _set_head(model) -> None:
    """Head rows: colour k's feature (in every merged position) scores its word; LayerNorm weight
    ``LN_WEIGHT``, bias 0. Pad grey (the last palette index) fires the word after the last colour's."""
    linear, norm = model.visual_tokenizer.head
    width = model.visual_tokenizer.backbone.feature_dim
    stride = model.visual_tokenizer.hidden_stride
    with torch.no_grad():
        linear.weight.zero_()
        for k, name in enumerate([*NAMES, "pad"]):
            word = WORD_OF.get(name, WORD_OF[NAMES[-1]] + 5)
            for position in range(stride * stride):
                linear.weight[word, position * width + k] = 1.0
        norm.weight.fill_(LN_WEIGHT)
        norm.bias.zero_()


def _expected_distribution(words: int) -> tuple[float, float]:
    """(top probability, entropy in nats) of LayerNorm(c * one-hot) x LN_WEIGHT over ``words``: the
    normalised one-hot is sqrt(V'-1) at the hot word and -1/sqrt(V'-1) elsewhere."""
    gap = LN_WEIGHT * words / math.sqrt(words - 1)
    top = 1 / (1 + (words - 1) * math.exp(-gap))
    rest = (1 - top) / (words - 1)
    return top, -(top * math.log(top) + (words - 1) * rest * math.log(rest))


@pytest.fixture(scope="module")
def v1_model():
    torch.manual_seed(0)
    model, processor = ovis.compose(vit="clip-tiny", llm="qwen2.5-tiny", visual_vocab_size=V)
    _stub_backbone(model)
    _set_head(model)
    return model.eval(), processor


@pytest.fixture(scope="module")
def tiled_model():
    torch.manual_seed(0)
    model, processor = ovis.compose(
        vit="clip-tiny", llm="qwen2.5-tiny", visual_vocab_size=V, max_partition=4, hidden_stride=2
    )
    _stub_backbone(model)
    _set_head(model)
    return model.eval(), processor


def _blocks(pattern: list[list[str]], block: int) -> Image.Image:
    """An image of ``block``-pixel squares coloured by palette name, row by row."""
    rows, cols = len(pattern), len(pattern[0])
    image = Image.new("RGB", (cols * block, rows * block))
    draw = ImageDraw.Draw(image)
    for r, row in enumerate(pattern):
        for c, name in enumerate(row):
            draw.rectangle((c * block, r * block, (c + 1) * block - 1, (r + 1) * block - 1), fill=PALETTE[name])
    return image


PATTERN = [
    ["red", "red", "green", "background"],
    ["blue", "yellow", "green", "background"],
    ["purple", "white", "red", "background"],
    ["background", "background", "blue", "blue"],
]


# -- one image ------------------------------------------------------------------------------------------------
def test_each_patch_fires_its_colours_word_with_the_constructed_probability(v1_model):
    model, processor = v1_model
    words = patch_words(model, processor, _blocks(PATTERN, 16), top_k=3)
    expected_words = [WORD_OF[name] for row in PATTERN for name in row]
    assert words.top_word.tolist() == expected_words
    assert words.vocab_size == V - 2 and words.grid is None and words.tokens_per_view == 16
    top, entropy = _expected_distribution(V - 2)
    torch.testing.assert_close(words.stats.top_probs[:, 0], torch.full((16,), top), rtol=1e-5, atol=1e-6)
    # the other words tie: each has (1 - top) / (V' - 1)
    torch.testing.assert_close(words.stats.top_probs[:, 1], torch.full((16,), (1 - top) / (V - 3)), rtol=1e-4, atol=0)
    torch.testing.assert_close(words.stats.entropy, torch.full((16,), entropy), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(words.stats.effective_words, torch.full((16,), math.exp(entropy)), rtol=1e-4, atol=0)
    # a 64 px square: patch (r, c) is the image's 16 px square (r, c)
    boxes = torch.tensor([[c * 16, r * 16, c * 16 + 16, r * 16 + 16] for r in range(4) for c in range(4)])
    torch.testing.assert_close(words.boxes, boxes.float())
    data = words.to_dict()
    assert data["layout"] == "v1" and data["summary"]["distinct_top_words"] == 7
    assert [t["words"][0] for t in data["tokens"]] == expected_words
    assert data["top_word_means"].startswith("the most probable word")


def test_padding_maps_back_to_no_pixels_and_boxes_scale_to_the_image(v1_model):
    model, processor = v1_model
    # 128 x 64: padded into the square as 64 x 32 with 16 px above and below: rows 0 and 3 see padding
    image = _blocks([["red", "green", "blue", "yellow"], ["purple", "white", "red", "green"]], 32)
    words = patch_words(model, processor, image)
    pad_word = WORD_OF[NAMES[-1]] + 5
    assert words.top_word[:4].tolist() == [pad_word] * 4 and words.top_word[12:].tolist() == [pad_word] * 4
    assert words.top_word[4:12].tolist() == [WORD_OF[n] for n in ["red", "green", "blue", "yellow"]] + [
        WORD_OF[n] for n in ["purple", "white", "red", "green"]
    ]
    assert words.in_place.tolist() == [False] * 4 + [True] * 8 + [False] * 4
    # patch row 1 covers the image's top half, 32 px per patch across
    torch.testing.assert_close(words.boxes[5], torch.tensor([32.0, 0.0, 64.0, 32.0]))
    torch.testing.assert_close(words.boxes[10], torch.tensor([64.0, 32.0, 96.0, 64.0]))


def test_tiles_are_placed_in_the_image_and_merged_tokens_cover_their_block(tiled_model):
    model, processor = tiled_model
    image = _blocks(PATTERN, 32)  # 128 x 128: a 2 x 2 grid of 64 px tiles, plus the global view
    words = patch_words(model, processor, image)
    assert words.grid == (2, 2) and words.has_global_view and words.tokens_per_view == 4
    assert words.vocab_size == V - 5 and words.hidden_stride == 2
    tiles = words.views > 0
    assert int(tiles.sum()) == 16 and words.in_place.tolist() == [False] * 4 + [True] * 16
    for t in torch.nonzero(tiles).flatten().tolist():
        left, top, right, bottom = words.boxes[t].tolist()
        assert (right - left, bottom - top) == (32.0, 32.0)  # a merged token: 2 x 2 patches of 16 px
        name = PATTERN[int(top) // 32][int(left) // 32]
        assert int(words.top_word[t]) == WORD_OF[name], (t, name)
    # the global view spans the whole image, one 64 px quarter per merged token
    torch.testing.assert_close(
        words.boxes[:4],
        torch.tensor([[0, 0, 64, 64], [64, 0, 128, 64], [0, 64, 64, 128], [64, 64, 128, 128]], dtype=torch.float32),
    )
    top, entropy = _expected_distribution(V - 5)
    torch.testing.assert_close(words.stats.entropy[tiles], torch.full((16,), entropy), rtol=1e-5, atol=1e-6)


def test_the_chunked_computation_equals_a_full_softmax():
    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Linear(24, 300, bias=False), torch.nn.LayerNorm(300))
    with torch.no_grad():
        head[1].weight.uniform_(0.5, 3.0)
        head[1].bias.normal_()
    features = torch.randn(3, 7, 24)
    chunked = word_stats(features, head, top_k=4, chunk_rows=4, keep_probs=True)  # 21 rows in 6 chunks
    with torch.no_grad():
        probs = head(features.reshape(21, 24)).softmax(dim=-1)
    values, indices = probs.topk(4, dim=-1)
    assert torch.equal(chunked.top_words, indices)
    torch.testing.assert_close(chunked.top_probs, values)
    torch.testing.assert_close(chunked.probs, probs)
    torch.testing.assert_close(chunked.entropy, -(probs * probs.log()).sum(dim=-1))
    whole = word_stats(features, head, top_k=4)
    assert torch.equal(whole.top_words, chunked.top_words)


def test_the_mlp_adapter_is_refused():
    model, processor = ovis.compose(vit="clip-tiny", llm="qwen2.5-tiny", visual_vocab_size=V, adapter="mlp")
    with pytest.raises(InspectError, match="no visual vocabulary"):
        patch_words(model, processor, Image.new("RGB", (64, 64)))


@pytest.mark.parametrize("function", ["gumbel_argmax", "st_argmax"])
def test_argmax_tokenizers_report_the_argmax_of_the_logits(function):
    torch.manual_seed(0)
    model, processor = ovis.compose(
        vit="clip-tiny", llm="qwen2.5-tiny", visual_vocab_size=V, tokenize_function=function
    )
    model.eval()
    image = _blocks(PATTERN, 16)
    words = patch_words(model, processor, image)
    with torch.no_grad():
        logits = model.visual_tokenizer.logits(processor.image_processor([image]))[0]
    assert torch.equal(words.top_word, logits.argmax(dim=-1))
    if function == "st_argmax":  # what the model embeds is exactly that word
        with torch.no_grad():
            sent = model.visual_tokenizer(processor.image_processor([image]))[0]
        assert torch.equal(sent.argmax(dim=-1), words.top_word)
    assert function in words.to_dict()["tokenize_function"]


# -- many images, and meaning -------------------------------------------------------------------------------
def test_usage_counts_and_exemplars_are_the_constructed_ones(v1_model):
    model, processor = v1_model
    images = [_blocks(PATTERN, 16), _blocks([["red"] * 4] * 4, 16)]
    usage = vocab_usage(model, processor, images, per_word=3)
    counts = {name: sum(row.count(name) for row in PATTERN) for name in NAMES}
    counts["red"] += 16
    expected = torch.zeros(V - 2, dtype=torch.long)
    for name, count in counts.items():
        expected[WORD_OF[name]] = count
    assert torch.equal(usage.counts, expected)
    assert usage.words_used == 7 and usage.tokens == 32 and usage.images == 2
    share = torch.tensor([c for c in counts.values() if c], dtype=torch.float64) / 32
    assert usage.usage_perplexity == pytest.approx(math.exp(float(-(share * share.log()).sum())))
    assert usage.most_used(1) == [(WORD_OF["red"], 19)]
    # every exemplar fired the word with the same probability: the earliest tokens are kept
    red = usage.exemplars[WORD_OF["red"]]
    assert [(e.image, e.box) for e in red] == [
        (0, (0.0, 0.0, 16.0, 16.0)),
        (0, (16.0, 0.0, 32.0, 16.0)),
        (0, (32.0, 32.0, 48.0, 48.0)),
    ]


def test_mutual_information_is_exact_on_hand_made_pairs():
    # word = label: MI = H(label); a word shared by two labels loses that split; independence: 0
    labels = ["a", "a", "b", "c"]
    assert mutual_information_bits([1, 1, 2, 3], labels) == pytest.approx(entropy_bits(labels)) == pytest.approx(1.5)
    assert mutual_information_bits([1, 1, 2, 2], labels) == pytest.approx(1.0)
    assert mutual_information_bits([1, 2, 1, 2], ["x", "x", "y", "y"]) == pytest.approx(0.0)


def test_meaning_on_labelled_scenes_is_what_the_head_was_built_to_say(v1_model):
    model, processor = v1_model
    # every patch a whole object (or background): labels from the pixels equal the colours drawn
    shapes = {
        "red": "circle",
        "green": "square",
        "blue": "cross",
        "yellow": "triangle",
        "purple": "circle",
        "white": "square",
    }
    scenes = []
    for shift in range(6):
        names = [NAMES[(k + shift) % len(NAMES)] for k in range(16)]
        pattern = [names[r * 4 : r * 4 + 4] for r in range(4)]
        things = [Thing(shapes[n], n, 0) for n in dict.fromkeys(names) if n != "background"]
        scenes.append((_blocks(pattern, 16), things))
    labels = token_labels(scenes[0][0], scenes[0][1], patch_words(model, processor, scenes[0][0]).boxes)
    assert labels["colour"] == [NAMES[k % len(NAMES)] for k in range(16)]
    report = measure_meaning(model, processor, scenes)
    colour, shape = report.by_kind["colour"], report.by_kind["shape"]
    # the word is a function of the colour and the colour of the word: MI = H(colour)
    assert colour["mi_bits"] == pytest.approx(colour["label_entropy_bits"], abs=1e-6)
    # shape is a function of the word (of the colour), not the other way: MI = H(shape)
    assert shape["mi_bits"] == pytest.approx(shape["label_entropy_bits"], abs=1e-6)
    assert colour["mi_shuffled_bits"] < colour["mi_bits"]
    assert colour["probe_accuracy_word_probs"] == 1.0 and colour["probe_accuracy_vit_features"] == 1.0
    assert report.tokens == 6 * 16 and report.probe_inputs == "full"


def test_a_random_head_says_little_about_colour(v1_model):
    torch.manual_seed(0)
    model, processor = ovis.compose(vit="clip-tiny", llm="qwen2.5-tiny", visual_vocab_size=V)
    _stub_backbone(model)
    with torch.no_grad():  # every colour scores the same word: nothing to tell colours apart
        model.visual_tokenizer.head[0].weight.zero_()
        model.visual_tokenizer.head[0].weight[3] = 1.0
    report = measure_meaning(model.eval(), processor, 8, probe=False)
    assert report.by_kind["colour"]["mi_bits"] == 0.0
    assert "probe_accuracy_word_probs" not in report.by_kind["colour"]


# -- the command line ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("inspect")
    model, processor = ovis.compose(vit="clip-tiny", llm="qwen2.5-tiny", visual_vocab_size=V)
    ovis.save(model, processor, root / "v1")
    model, processor = ovis.compose(vit="clip-tiny", llm="qwen2.5-tiny", visual_vocab_size=V, adapter="mlp")
    ovis.save(model, processor, root / "mlp")
    model, processor = ovis.compose(
        vit="clip-tiny", llm="qwen2.5-tiny", visual_vocab_size=V, max_partition=4, hidden_stride=2
    )
    ovis.save(model, processor, root / "tiled")
    images = root / "images"
    images.mkdir()
    for k in range(3):
        _blocks(PATTERN if k % 2 == 0 else [["red"] * 4] * 4, 32).save(images / f"{k}.png")
    records = [{"id": str(k), "image": f"{k}.png", "caption": "blocks"} for k in range(3)]
    (root / "captions.json").write_text(json.dumps(records))
    info = {"blocks": {"meta_file": "captions.json", "image_dir": "images", "data_format": "caption"}}
    (root / "dataset_info.json").write_text(json.dumps(info))
    return root


@pytest.mark.parametrize("layout", ["v1", "tiled"])
def test_inspect_image_writes_the_picture_and_the_numbers(saved, tmp_path, layout, capsys):
    out = tmp_path / "out"
    args = [
        "inspect",
        "image",
        "--model",
        str(saved / layout),
        str(saved / "images" / "0.png"),
        "--out",
        str(out),
        "--top-k",
        "2",
    ]
    assert main([*args, "--max-partition", "4"] if layout == "tiled" else args) == 0
    assert (out / "0-words.png").stat().st_size > 10_000
    data = json.loads((out / "0-words.json").read_text())
    assert data["layout"] == layout and all(len(t["words"]) == 2 for t in data["tokens"])
    assert len(data["tokens"]) == (16 if layout == "v1" else 5 * 4)
    assert "distinct top words" in capsys.readouterr().out


def test_inspect_vocab_and_meaning_write_their_files(saved, tmp_path):
    out = tmp_path / "vocab"
    code = main(
        [
            "inspect",
            "vocab",
            "--model",
            str(saved / "v1"),
            "--data",
            str(saved / "dataset_info.json"),
            "--images",
            "2",
            "--out",
            str(out),
            "--no-progress",
            "--words",
            "4",
        ]
    )
    assert code == 0
    data = json.loads((out / "vocab.json").read_text())
    assert data["images"] == 2 and data["tokens"] == 32 and len(data["image_files"]) == 2
    assert sum(data["counts"].values()) == 32
    assert (out / "usage.png").stat().st_size > 5_000 and (out / "exemplars.png").stat().st_size > 500
    code = main(
        ["inspect", "meaning", "--model", str(saved / "v1"), "--images", "6", "--out", str(out), "--no-progress"]
    )
    assert code == 0
    meaning = json.loads((out / "meaning.json").read_text())
    assert set(meaning["by_kind"]) == {"colour", "shape"} and meaning["images"] == 6
    assert 0.0 <= meaning["by_kind"]["colour"]["probe_accuracy_word_probs"] <= 1.0


def test_inspect_vocab_reads_a_benchmark_tsv(saved, tmp_path):
    from ovis.eval.tsv import write_benchmark

    encoded = [(saved / "images" / f"{k}.png").read_bytes() for k in range(3)]
    rows = [{"index": k, "question": "What?", "answer": "A", "image": encoded[k % 2]} for k in range(4)]
    tsv = write_benchmark(tmp_path / "bench.tsv", rows)
    out = tmp_path / "vocab"
    assert (
        main(
            [
                "inspect",
                "vocab",
                "--model",
                str(saved / "v1"),
                "--data",
                str(tsv),
                "--images",
                "5",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    data = json.loads((out / "vocab.json").read_text())
    assert data["images"] == 2  # four rows, two distinct pictures
    assert data["image_files"] == [f"{tsv}#0", f"{tsv}#1"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["image", "--model", "{root}/mlp", "{root}/images/0.png"], "no visual vocabulary"),
        (["image", "--model", "{root}/v1", "{root}/images/missing.png"], "missing.png: image file not found"),
        (["image", "--model", "{root}/v1", "{root}/images/0.png", "--max-partition", "4"], "uses the v1 layout"),
        (
            ["vocab", "--model", "{root}/v1", "--data", "{root}/captions.json", "--images", "2"],
            "expected a JSON object of dataset name",
        ),
        (["vocab", "--model", "{root}/v1", "--data", "{root}/images/0.png"], "expected a dataset_info.json"),
        (
            ["vocab", "--model", "{root}/v1", "--data", "{root}/dataset_info.json", "--datasets", "nope"],
            "--datasets nope: not in",
        ),
    ],
)
def test_bad_input_is_one_named_line(saved, tmp_path, capsys, args, message):
    argv = ["inspect", *[a.format(root=saved) for a in args], "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_help_stays_light():
    import subprocess
    import sys

    code = "import sys; from ovis.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_view_maps_invert_every_resize_and_the_canvas_tiles():
    from ovis.inspect.layout import token_boxes, token_square_boxes, view_maps

    squares = token_square_boxes(64, 16, 1)
    # crop: a 128 x 64 image keeps its middle 64 px square
    boxes, _ = token_boxes(view_maps((128, 64), 64, "crop", None), squares)
    assert boxes[0].tolist() == [32.0, 0.0, 48.0, 16.0] and boxes[15].tolist() == [80.0, 48.0, 96.0, 64.0]
    # squash: the whole image, 32 x 16 px per patch
    boxes, _ = token_boxes(view_maps((128, 64), 64, "squash", None), squares)
    assert boxes[5].tolist() == [32.0, 16.0, 64.0, 32.0]
    # canvas tiles (1 x 2 grid): each tile its half, the global view the whole image squashed
    boxes, views = token_boxes(view_maps((256, 64), 64, "pad", (1, 2), tile_resize="canvas"), squares)
    assert views.tolist() == [0] * 16 + [1] * 16 + [2] * 16
    assert boxes[0].tolist() == [0.0, 0.0, 64.0, 16.0]  # global: 256 / 4 px per patch across
    # canvas 128 x 64 from 256 x 64: 2 image px per canvas px across, 1 down
    assert boxes[16].tolist() == [0.0, 0.0, 32.0, 16.0] and boxes[32].tolist() == [128.0, 0.0, 160.0, 16.0]
    # merged 3 x 3 over a 4 x 4 grid: the last block row and column hold one patch
    merged = token_square_boxes(64, 16, 3)
    assert merged == [(0, 0, 48, 48), (48, 0, 64, 48), (0, 48, 48, 64), (48, 48, 64, 64)]


def test_vocabulary_figures_and_their_chart(v1_model, tmp_path):
    from ovis.inspect import FIGURES, draw, vocabulary_figures

    model, processor = v1_model
    scenes = [(_blocks(PATTERN, 16), [Thing("circle", "red", 0), Thing("square", "green", 1)])]
    scenes.append((_blocks([["red"] * 4] * 4, 16), [Thing("circle", "red", 0)]))
    figures = vocabulary_figures(model, processor, scenes)
    assert set(FIGURES) <= set(figures) and figures["images"] == 2 and figures["vocab_size"] == V - 2
    assert figures["words_used"] == 7  # the pattern's seven colours
    # labels come from the scenes' objects (red and green; the other colours are no object, so
    # background); each word names one label: MI = H(label) over the 32 tokens
    colours = [n if n in ("red", "green") else "background" for row in PATTERN for n in row] + ["red"] * 16
    assert figures["mi_colour_bits"] == pytest.approx(entropy_bits(colours), abs=1e-6)
    assert "colour_probe_accuracy_word_probs" not in figures  # probes only when asked
    chart = draw.figures_by_stage({"a": figures, "b": figures}, tmp_path / "stages.png")
    assert chart.stat().st_size > 10_000
