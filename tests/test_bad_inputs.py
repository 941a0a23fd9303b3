"""A corpus of hostile files, generated here, fed through every entry point that takes one.

Each entry point (the image loader, ``OvisRunner``, ``ovis run``, the HTTP API, the web UI's
upload path, ``ovis eval``, training data, ``ovis.load``, ``ovis convert``, ``ovis serve``,
``ovis eval --model``, ``ovis train``) must answer every hostile file with a clean error that names
it, or skip and count it where a run goes on (training, evaluation): never a traceback, never a
dead run. Odd but valid files (16-bit, CMYK, palette transparency, EXIF rotation...) must give
exactly the pixels of their plain 8-bit RGB twin: never silent damage.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from ovis.cli import main
from ovis.errors import OvisError
from ovis.interfaces import ImageError, load_image
from ovis.interfaces.image import MAX_PIXELS_ENV
from ovis.ports import free_port

from .test_model_directory import CASES as DAMAGED_MODEL_DIRS


# -- the corpus ------------------------------------------------------------------------------------
def _encoded(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_with(width: int, height: int, idat: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _noise_jpeg() -> bytes:
    return _encoded(Image.effect_noise((64, 48), 60).convert("RGB"), "JPEG")


def _bad_crc() -> bytes:
    good = bytearray(_encoded(Image.new("RGB", (40, 30), "red")))
    good[29] ^= 0xFF  # inside the IHDR chunk: its CRC no longer matches
    return bytes(good)


#: name -> (the file's bytes, what the error must say). A file name ends each name's file.
HOSTILE: dict[str, tuple[Callable[[], bytes], str]] = {
    "empty.png": (lambda: b"", "not a readable image"),
    "text.png": (lambda: b"this is a shopping list, not a picture\n", "not a readable image"),
    "svg.png": (lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>', "not a readable image"),
    # Pillow would hand EPS to Ghostscript, an interpreter: the loader does not open EPS at all.
    "postscript.eps": (lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
                       "not a readable image"),
    "half.jpg": (lambda: _noise_jpeg()[: len(_noise_jpeg()) // 2], "truncated or corrupt"),
    "half.png": (lambda: _encoded(Image.effect_noise((64, 48), 60))[:300], "truncated or corrupt"),
    "bad-crc.png": (_bad_crc, "not a readable image"),
    "garbage-pixels.png": (lambda: _png_with(10, 10, b"definitely not zlib"), "truncated or corrupt"),
    "zero-size.png": (lambda: _png_with(0, 0, zlib.compress(b"")), "not a readable image"),
    # Headers claiming 400 and 100 megapixels in a few dozen bytes: over Pillow's bomb error
    # threshold, and between ovis's limit and Pillow's.
    "bomb.png": (lambda: _png_with(20000, 20000, zlib.compress(b"")), "too large"),
    "over-limit.png": (lambda: _png_with(10000, 10000, zlib.compress(b"")), "10000x10000"),
}


def _exif_rotated() -> bytes:
    stored = Image.new("RGB", (40, 30), "blue")
    stored.paste((255, 0, 0), (0, 0, 20, 30))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise
    return _encoded(stored, exif=exif)


def _upright_twin() -> Image.Image:
    twin = Image.new("RGB", (30, 40), "blue")
    twin.paste((255, 0, 0), (0, 0, 30, 20))  # turned clockwise, the left half is on top
    return twin


def _palette_with_transparency() -> bytes:
    image = Image.new("P", (40, 30), 1)
    image.putpalette([0, 0, 0, 0, 128, 0] + [0] * 762)
    image.paste(0, (0, 0, 20, 30))  # index 0, transparent, on the left
    return _encoded(image, transparency=0)


def _half_white_half_green() -> Image.Image:
    twin = Image.new("RGB", (40, 30), (0, 128, 0))
    twin.paste((255, 255, 255), (0, 0, 20, 30))
    return twin


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (40, 30), colour) for colour in ("red", "blue", "lime")]
    return _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])


def _jpeg_named_png() -> tuple[bytes, Image.Image]:
    data = _noise_jpeg()
    return data, Image.open(io.BytesIO(data)).convert("RGB")


def _checkerboard_1bit() -> Image.Image:
    image = Image.new("1", (16, 16), 0)
    for x in range(16):
        for y in range(16):
            image.putpixel((x, y), (x + y) % 2)
    return image


#: name -> (the file's bytes, its plain 8-bit RGB twin): each must load to exactly its twin's pixels
ODD_BUT_VALID: dict[str, Callable[[], tuple[bytes, Image.Image]]] = {
    "grey-16-bit.png": lambda: (_encoded(Image.new("I;16", (40, 30), 32896)), Image.new("RGB", (40, 30), (128,) * 3)),
    "cmyk.tiff": lambda: (_encoded(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "TIFF"),
                          Image.new("RGB", (40, 30), (255, 0, 0))),
    "float-0-1.tiff": lambda: (_encoded(Image.new("F", (40, 30), 0.5), "TIFF"), Image.new("RGB", (40, 30), (128,) * 3)),
    "palette-transparency.png": lambda: (_palette_with_transparency(), _half_white_half_green()),
    "grey-alpha-clear.png": lambda: (_encoded(Image.new("LA", (40, 30), (0, 0))), Image.new("RGB", (40, 30), "white")),
    "exif-rotated.png": lambda: (_exif_rotated(), _upright_twin()),
    "animated.gif": lambda: (_animated_gif(), Image.new("RGB", (40, 30), (255, 0, 0))),
    "jpeg-named.png": _jpeg_named_png,
    "one-bit.png": lambda: (_encoded(_checkerboard_1bit()), _checkerboard_1bit().convert("RGB")),
    "one-by-two-thousand.png": lambda: (_encoded(Image.new("RGB", (1, 2000), "red")),
                                        Image.new("RGB", (1, 2000), (255, 0, 0))),
}

#: only where files are named by path (not HTTP or TSV cells)
MISSING_OR_NOT_A_FILE = {"missing.png": "not found", "a-directory.png": "is a directory, not an image file"}


def _write_hostile(root: Path) -> dict[Path, str]:
    root.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, (make, reason) in HOSTILE.items():
        (root / name).write_bytes(make())
        files[root / name] = reason
    (root / "a-directory.png").mkdir()
    for name, reason in MISSING_OR_NOT_A_FILE.items():
        files[root / name] = reason
    return files


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[Path, str]:
    return _write_hostile(tmp_path_factory.mktemp("hostile"))


@pytest.fixture(scope="module")
def odd_files(tmp_path_factory) -> dict[Path, Image.Image]:
    root = tmp_path_factory.mktemp("odd")
    files = {}
    for name, make in ODD_BUT_VALID.items():
        data, twin = make()
        (root / name).write_bytes(data)
        files[root / name] = twin
    return files


@pytest.fixture(autouse=True)
def default_limit(monkeypatch):
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)


def _by_name(files: dict[Path, object]) -> list[str]:
    return sorted(path.name for path in files)


# -- the one loader --------------------------------------------------------------------------------
def test_the_loader_names_every_hostile_file_and_why(corpus):
    for path, reason in corpus.items():
        with pytest.raises(ImageError) as caught:
            load_image(path)
        assert path.name in str(caught.value) and reason in str(caught.value), (path.name, str(caught.value))


def test_odd_but_valid_files_give_exactly_their_twins_pixels(odd_files):
    for path, twin in odd_files.items():
        image = load_image(path)
        assert image.mode == "RGB" and image.size == twin.size, path.name
        assert image.tobytes() == twin.tobytes(), f"{path.name} does not load to its 8-bit twin"


# -- OvisRunner and `ovis run` ---------------------------------------------------------------------
def test_the_runner_refuses_each_hostile_file_by_name(corpus, chatty_runner):
    for path, reason in corpus.items():
        with pytest.raises(OvisError) as caught:
            chatty_runner.run(path, "What is in the picture?")
        assert path.name in str(caught.value) and reason in str(caught.value), (path.name, str(caught.value))
    assert chatty_runner.run(Image.new("RGB", (32, 32), "red"), "What is it?")["output"]  # still serving


def test_the_runner_answers_an_odd_file_as_it_answers_its_twin(odd_files, chatty_runner):
    for path, twin in odd_files.items():
        odd, plain = chatty_runner.run(path, "Describe it."), chatty_runner.run(twin, "Describe it.")
        assert odd["output"] == plain["output"], path.name


def test_ovis_run_prints_one_line_per_hostile_file(corpus, chatty_model_dir, capsys):
    for path, reason in corpus.items():
        assert main(["run", "--model", str(chatty_model_dir), "--image", str(path), "hi"]) == 2, path.name
        err = capsys.readouterr().err
        assert "Traceback" not in err and path.name in err and reason in err, (path.name, err)
        assert len(err.strip().splitlines()) == 1, err


# -- the HTTP API and the web UI's uploads ---------------------------------------------------------
@pytest.fixture(scope="module")
def http(chatty_model_dir, served):
    import httpx

    with served(chatty_model_dir, runner={"max_new_tokens": 4}, model_name="hostile") as (_, server), \
            httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


def _ask(http, data: bytes):
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    return http.post("/v1/chat/completions", json={"model": "hostile", "max_tokens": 4, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                     {"type": "image_url", "image_url": {"url": url}}]}]})


def test_the_api_answers_each_hostile_image_with_a_4xx(http):
    for name, (make, _) in HOSTILE.items():
        reply = _ask(http, make())
        assert reply.status_code in (400, 413), (name, reply.status_code, reply.text)
        error = reply.json()["error"]
        assert "image" in error["message"] and error["type"] == "invalid_request_error", (name, error)
    assert _ask(http, _encoded(Image.new("RGB", (32, 32), "red"))).status_code == 200  # still serving


def test_the_api_answers_an_odd_image_as_its_twin(http, odd_files):
    for path, twin in odd_files.items():
        odd, plain = _ask(http, path.read_bytes()), _ask(http, _encoded(twin))
        assert odd.status_code == plain.status_code == 200, (path.name, odd.text)
        assert odd.json()["choices"][0]["message"] == plain.json()["choices"][0]["message"], path.name


def test_web_uploads_are_refused_by_name(corpus):
    from ovis.serve.errors import RequestError
    from ovis.serve.limits import ServeLimits
    from ovis.serve.web import load_images

    for path, _ in corpus.items():
        with pytest.raises(RequestError) as caught:
            load_images([str(path)], ServeLimits())
        assert path.name in str(caught.value), str(caught.value)


# -- ovis eval: a TSV whose rows carry the corpus -----------------------------------------------------
def _tsv_rows(images: dict[str, bytes]) -> list[dict]:
    rows = []
    for i, (name, data) in enumerate(images.items()):
        rows.append({"index": i, "image": data, "question": f"What is {name}?", "A": "red", "B": "blue",
                     "answer": "A", "category": name})
    return rows


def test_eval_counts_each_hostile_row_and_scores_the_rest(chatty_model_dir, odd_files, tmp_path, capsys):
    from ovis.eval.tsv import read_benchmark, write_benchmark

    images = {name: make() for name, (make, _) in HOSTILE.items()}
    images.update({path.name: path.read_bytes() for path in odd_files})
    tsv = write_benchmark(tmp_path / "Hostile.tsv", _tsv_rows(images))
    bench = read_benchmark(tsv)
    bad = {row["index"]: row["reason"] for row in bench.bad_rows}
    assert sorted(bad) == sorted(str(i) for i in range(len(HOSTILE))), bad
    assert all("image" in reason for reason in bad.values())
    assert len(bench.items) == len(odd_files)

    out = tmp_path / "eval"
    assert main(["eval", "--model", str(chatty_model_dir), "--data", str(tsv), "--out", str(out),
                 "--max-new-tokens", "2"]) == 0, capsys.readouterr().err
    report = json.loads((out / "Hostile" / "results.json").read_text())
    assert report["bad_rows"] == len(HOSTILE) and report["answered"] == len(odd_files)


# -- training data -----------------------------------------------------------------------------------
def _conversation(image: str) -> dict:
    return {"id": image, "image": image, "conversations": [
        {"from": "human", "value": "<image>\nWhat colour is it?"}, {"from": "gpt", "value": "red."}]}


def test_training_skips_and_counts_each_hostile_record(corpus, odd_files, toy_processor, tmp_path):
    from torch.utils.data import DataLoader

    from ovis.data import DataCollator, build_dataset
    from ovis.data.skips import SkipLog

    images = tmp_path / "images"
    shutil.copytree(next(iter(corpus)).parent, images)
    for path in odd_files:
        shutil.copy(path, images / path.name)
    names = _by_name(corpus) + _by_name(odd_files)
    (tmp_path / "chat.json").write_text(json.dumps([_conversation(name) for name in names]))
    (tmp_path / "dataset_info.json").write_text(json.dumps(
        {"chat": {"meta_file": "chat.json", "image_dir": "images", "data_format": "conversation"}}))
    skips = SkipLog()
    dataset = build_dataset(tmp_path / "dataset_info.json", ["chat"], toy_processor, skip_log=skips)
    batches = list(DataLoader(dataset, batch_size=4, collate_fn=DataCollator(toy_processor)))
    kept = sum(batch["input_ids"].shape[0] for batch in batches if "input_ids" in batch)
    assert kept == len(odd_files) and skips.count == len(corpus), skips.reasons()
    reasons = "\n".join(skips.reasons().values())
    for path in corpus:
        assert path.name in reasons, f"{path.name} is not named among the skips:\n{reasons}"


# -- damaged model directories through every command that takes a model -------------------------------
@pytest.fixture(scope="module")
def good_model(tmp_path_factory) -> Path:
    import ovis

    out = tmp_path_factory.mktemp("model") / "model"
    ovis.compose(vit="clip-tiny", llm="qwen2.5-tiny", out=out, visual_vocab_size=64)
    return out


def _commands(model: Path, tmp_path: Path) -> dict[str, list[str]]:
    (tmp_path / "text.json").write_text(json.dumps([{"id": "t", "conversations": [
        {"from": "human", "value": "Say one."}, {"from": "gpt", "value": "one"}]}]))
    (tmp_path / "dataset_info.json").write_text(json.dumps(
        {"text": {"meta_file": "text.json", "data_format": "conversation"}}))
    train_yaml = tmp_path / "train.yaml"
    train_yaml.write_text(json.dumps({
        "stage": 3, "model": str(model), "output_dir": str(tmp_path / "run"), "max_steps": 1, "deepspeed": None,
        "data": {"dataset_info": str(tmp_path / "dataset_info.json"), "datasets": ["text"]}}))
    return {
        "run": ["run", "--model", str(model), "hi"],
        "convert": ["convert", str(model), "--to", "original", "--out", str(tmp_path / "v1")],
        "eval": ["eval", "--model", str(model), "--synth", "--out", str(tmp_path / "eval"), "--limit", "1"],
        "serve": ["serve", "--model", str(model), "--port", str(free_port()), "--no-ui"],
        "train": ["train", "--config", str(train_yaml), "--no-progress"],
    }


@pytest.mark.parametrize("damage", list(DAMAGED_MODEL_DIRS))
def test_every_command_names_a_damaged_model_directory(damage, good_model, tmp_path, capsys, monkeypatch):
    import uvicorn

    def started(*args, **kwargs):  # a server that starts would serve forever: fail instead
        raise AssertionError("ovis serve started on a damaged model directory")

    monkeypatch.setattr(uvicorn, "run", started)
    monkeypatch.setattr(uvicorn.Server, "run", started)
    copy = tmp_path / "damaged"
    shutil.copytree(good_model, copy)
    harm, _, message = DAMAGED_MODEL_DIRS[damage]
    harm(copy)
    for command, argv in _commands(copy, tmp_path).items():
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err, (command, code, err[-2000:])
        assert re.search(message, err), (command, err)


# -- hostile benchmark files through `ovis eval` (refused before the model loads) ---------------------
HEADER = "index\timage_path\tquestion\tanswer\n"
HOSTILE_TSVS: dict[str, tuple[bytes | None, str]] = {
    # name: (content, or None for a directory; what the one-line error must say)
    "empty.tsv": (b"", "missing column"),
    "random-bytes.tsv": (bytes(range(128, 256)) * 20, "not UTF-8 text"),
    "latin-1.tsv": ((HEADER + "0\tx.png\tWhat\xff?\tyes\n").encode("latin-1"), "not UTF-8 text"),
    "comma-separated.tsv": (b"index,image_path,question,answer\n0,x.png,What?,yes\n", "is it a CSV?"),
    "header-only.tsv": (HEADER.encode(), "no data rows"),
    "short-row.tsv": ((HEADER + "0\tx.png\tWhat?\n").encode(), "row 1 has 3 tab-separated fields, the header 4"),
    "index-twice.tsv": ((HEADER + "0\tx.png\tWhat?\tyes\n0\tx.png\tAgain?\tno\n").encode(), "appears twice"),
    "empty-index.tsv": ((HEADER + "\tx.png\tWhat?\tyes\n").encode(), "empty index"),
    "a-directory.tsv": (None, "a directory"),
}


@pytest.mark.parametrize("name", list(HOSTILE_TSVS))
def test_eval_names_a_hostile_benchmark_file_before_loading(name, chatty_model_dir, tmp_path, capsys, monkeypatch):
    import ovis.serve.runner

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the benchmark file was checked")

    monkeypatch.setattr(ovis.serve.runner.OvisRunner, "__init__", no_loading)
    content, message = HOSTILE_TSVS[name]
    path = tmp_path / name
    path.mkdir() if content is None else path.write_bytes(content)
    code = main(["eval", "--model", str(chatty_model_dir), "--data", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and name in err and message in err, (code, err[-1500:])
    assert len(err.strip().splitlines()) == 1, err


# -- damaged original (v1) checkpoints through `ovis convert --from original` and `ovis run` ----------
@pytest.fixture(scope="module")
def v1_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """The same tiny model in the v1 layout, with pickle weights and with safetensors weights."""
    import ovis

    root = tmp_path_factory.mktemp("v1")
    ovis.compose(vit="clip-tiny", llm="qwen1.5-tiny", out=root / "ovis", visual_vocab_size=64)
    assert main(["convert", str(root / "ovis"), "--to", "original", "--out", str(root / "bin")]) == 0
    assert main(["convert", str(root / "ovis"), "--to", "original", "--out", str(root / "st"), "--safetensors"]) == 0
    return {"bin": root / "bin", "st": root / "st"}


def _cut_in_half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


class _Planted:
    """A pickle that would run a command when unpickled without weights_only."""

    def __reduce__(self):
        import os

        return (os.system, ("echo planted > planted.txt",))


def _edit_config(**changes) -> Callable[[Path], None]:
    def edit(directory: Path) -> None:
        config = json.loads((directory / "config.json").read_text())
        config.update(changes)
        (directory / "config.json").write_text(json.dumps(config))

    return edit


V1_DAMAGE: dict[str, tuple[str, Callable[[Path], None], str]] = {
    # name: (which checkpoint, the damage, what the one-line error must say)
    "truncated pickle weights": ("bin", lambda d: _cut_in_half(d / "pytorch_model.bin"), "corrupt, truncated"),
    "garbage pickle weights": ("bin", lambda d: (d / "pytorch_model.bin").write_bytes(b"\x80\x02garbage" * 9),
                               "corrupt, truncated"),
    "planted pickle": ("bin", lambda d: __import__("torch").save({"w": _Planted()}, d / "pytorch_model.bin"),
                       "holds Python objects, not only tensors"),
    "truncated safetensors": ("st", lambda d: _cut_in_half(d / "model.safetensors"), "corrupt, truncated"),
    "image processor config not JSON": ("bin", lambda d: (d / "preprocessor_config.json").write_text("{nope"),
                                        "preprocessor_config.json: not valid JSON at line 1"),
    "a number given as text": ("bin", _edit_config(multimodal_max_length="lots"),
                               "multimodal_max_length is 'lots'; expected a whole number"),
    "visual vocabulary as text": ("bin", _edit_config(visual_tokenizer_config={"model_type": "clip_visual_tokenizer",
                                                                               "vocab_size": "big"}),
                                  r"no backbone_config|vocab_size is 'big'"),
    "llm_config a string": ("bin", _edit_config(llm_config="qwen"), "llm_config must be a JSON object"),
    "neither layout": ("bin", _edit_config(visual_tokenizer_config=None), "neither an ovis model"),
    "tokenizer removed": ("bin", lambda d: [(d / n).unlink() for n in ("tokenizer.json", "tokenizer_config.json")],
                          "no tokenizer"),
    "tokenizer.json not JSON": ("bin", lambda d: (d / "tokenizer.json").write_text("{nope"),
                                "could not load the tokenizer"),
}


@pytest.mark.parametrize("name", list(V1_DAMAGE))
def test_convert_and_run_name_a_damaged_v1_checkpoint(name, v1_checkpoints, tmp_path, capsys, monkeypatch):
    which, damage, message = V1_DAMAGE[name]
    copy = tmp_path / "v1"
    shutil.copytree(v1_checkpoints[which], copy)
    damage(copy)
    monkeypatch.chdir(tmp_path)
    for argv in (["convert", str(copy), "--from", "original", "--out", str(tmp_path / "out")],
                 ["run", "--model", str(copy), "--max-new-tokens", "2", "hi"]):
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err, (argv[0], code, err[-2000:])
        assert re.search(message, err.strip().splitlines()[-1]), (argv[0], err[-2000:])
    assert not (tmp_path / "out").exists() and not (tmp_path / "planted.txt").exists()


def test_a_training_run_over_the_corpus_finishes_and_totals_its_skips(corpus, odd_files, tmp_path):
    """A real run (the plain PyTorch loop) on records that are mostly hostile: it trains on the odd
    but valid ones, never on an empty step, exports, and writes one total naming every skip."""
    import ovis
    from ovis.train.config import TrainConfig
    from ovis.train.trainer import Trainer

    images = tmp_path / "images"
    shutil.copytree(next(iter(corpus)).parent, images)
    for path in odd_files:
        shutil.copy(path, images / path.name)
    records = [_conversation(name) for name in _by_name(corpus) + _by_name(odd_files)]
    (tmp_path / "chat.json").write_text(json.dumps(records))
    (tmp_path / "dataset_info.json").write_text(json.dumps(
        {"chat": {"meta_file": "chat.json", "image_dir": "images", "data_format": "conversation"}}))
    ovis.compose(vit="clip-toy", llm="qwen-toy", out=tmp_path / "model", visual_vocab_size=64)
    config = TrainConfig.model_validate({
        "stage": 3, "model": tmp_path / "model", "output_dir": tmp_path / "run", "deepspeed": None,
        "data": {"dataset_info": tmp_path / "dataset_info.json", "datasets": ["chat"]},
        # 6 steps take at least the 6 micro-batches of one epoch: every record is met.
        "per_device_batch_size": 4, "max_steps": 6, "save_steps": 3, "logging_steps": 1, "precision": "fp32",
    })
    Trainer(config, progress=False).run()
    report = json.loads((tmp_path / "run" / "skips.json").read_text())
    assert report["finished"] and report["records_skipped"] == len(corpus), report
    assert report["records_total"] == len(corpus) + len(odd_files)
    named = json.dumps(report["examples"])
    assert sum(report["by_reason"].values()) == len(corpus) and "bomb.png" in named
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps if "loss" in s] == [1, 2, 3, 4, 5, 6]
    assert all(s["loss"] > 0 for s in steps if "loss" in s)  # no step on zero samples
    assert (tmp_path / "run" / "final" / "config.json").is_file()
