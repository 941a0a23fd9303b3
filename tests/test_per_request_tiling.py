"""Per-request ``max_partition``: the runner, batches mixing settings, the HTTP API and ``ovis eval``'s
VLMEvalKit-style defaults (and that they are part of the eval fingerprint)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image, ImageDraw

import ovis
from ovis.errors import ConfigError
from ovis.serve.runner import OvisRunner, RunnerArguments
from ovis.tiling import choose_grid


def _wide_image(width: int = 400, height: int = 100) -> Image.Image:
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for i in range(0, width, 19):
        draw.rectangle((i, (i * 5) % height, i + 8, (i * 5) % height + 8), fill=(i % 256, 60, 190))
    return image


@pytest.fixture(scope="module")
def tiled_runner():
    torch.manual_seed(0)
    model, processor = ovis.compose(
        vit="clip-tiny", llm="qwen2.5-tiny", visual_vocab_size=256, max_partition=9, hidden_stride=2
    )
    return OvisRunner(RunnerArguments(model_path="<tiny>", max_new_tokens=4), model=model.eval(), processor=processor)


@pytest.fixture(scope="module")
def v1_runner():
    torch.manual_seed(0)
    model, processor = ovis.compose(vit="clip-tiny", llm="qwen2.5-tiny", visual_vocab_size=256)
    args = RunnerArguments(model_path="<tiny v1>", max_new_tokens=4)
    return OvisRunner(args, model=model.eval(), processor=processor)


def test_max_partition_sets_the_grid_per_request(tiled_runner):
    image = _wide_image()
    side = tiled_runner.processor.tiler.side
    default = tiled_runner.prepare("What?", image)
    assert default.sample.grids == [choose_grid(400, 100, side, 9)]
    for n in (1, 2, 4):
        request = tiled_runner.prepare("What?", image, max_partition=n)
        (grid,) = request.sample.grids
        assert grid == choose_grid(400, 100, side, n) and grid[0] * grid[1] <= n
    assert tiled_runner.prepare("What?", image, max_partition=1).sample.grids == [(1, 1)]
    assert len(tiled_runner.prepare("What?", image, max_partition=1).sample.input_ids) < len(default.sample.input_ids)


def test_run_generate_and_session_take_max_partition(tiled_runner):
    image = _wide_image()
    one = tiled_runner.run(image, "What?", max_partition=1)
    nine = tiled_runner.run(image, "What?")
    assert one["prompt_tokens"] < nine["prompt_tokens"]
    session = tiled_runner.session(max_partition=1)
    assert session.ask("What?", [image])["prompt_tokens"] == one["prompt_tokens"]
    # a turn may override the session's setting
    assert session.ask("And?", [image], max_partition=2)["prompt_tokens"] > one["prompt_tokens"]


def test_a_batch_may_mix_max_partition_and_equals_one_at_a_time(tiled_runner):
    image = _wide_image()
    params = tiled_runner.args.generation_params(max_new_tokens=5)
    requests = [tiled_runner.prepare("What?", image, params, max_partition=n) for n in (1, 2, 9)]
    assert len({len(r.sample.input_ids) for r in requests}) >= 2  # different grids, so different lengths
    together = tiled_runner.generate(requests)
    alone = [tiled_runner.generate([r])[0] for r in requests]
    assert [c.token_ids for c in together] == [c.token_ids for c in alone]
    assert [c.prompt_tokens for c in together] == [len(r.sample.input_ids) for r in requests]


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, "4"])
def test_bad_max_partition_is_refused_naming_it(tiled_runner, bad):
    with pytest.raises(ConfigError, match="max_partition"):
        tiled_runner.run(_wide_image(), "What?", max_partition=bad)


def test_v1_models_refuse_an_explicit_max_partition(v1_runner):
    with pytest.raises(ConfigError, match="tiled image layout.*v1 layout"):
        v1_runner.run(_wide_image(), "What?", max_partition=4)
    with pytest.raises(ConfigError, match="v1 layout"):
        v1_runner.session(max_partition=2)
    assert v1_runner.run(_wide_image(), "What?")["prompt_tokens"] > 0  # unset: fine


# -- the HTTP API -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiled_http(tmp_path_factory, served):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    from ovis.composer import save
    from ovis.serve.limits import ServeLimits

    torch.manual_seed(0)
    model, processor = ovis.compose(
        vit="clip-tiny", llm="qwen2.5-tiny", visual_vocab_size=256, max_partition=9, hidden_stride=2
    )
    directory = save(model, processor, tmp_path_factory.mktemp("tiled") / "tiled")
    limits = ServeLimits(max_partition=12, max_new_tokens=8)
    runner = {"max_new_tokens": 3, "dtype": "float32"}
    with served(directory, runner=runner, limits=limits, model_name="tiled", window_s=0.2) as (service, server):
        with httpx.Client(base_url=server.url, timeout=120) as http:
            yield service, http


def _png_part(image: Image.Image) -> dict:
    import base64
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()},
    }


def _ask(http, model: str, **extra):
    content = [_png_part(_wide_image()), {"type": "text", "text": "What?"}]
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 3, **extra}
    return http.post("/v1/chat/completions", json=body)


def test_the_api_takes_max_partition_as_an_extra_field(tiled_http):
    service, http = tiled_http
    replies = {n: _ask(http, "tiled", max_partition=n) for n in (1, 9)}
    for n, reply in replies.items():
        assert reply.status_code == 200, reply.text
        params = service.params(max_new_tokens=3)
        request = service.runner.prepare("<image>\nWhat?", [_wide_image()], params, max_partition=n)
        expected = service.runner.generate([request])[0]
        assert reply.json()["usage"]["prompt_tokens"] == expected.prompt_tokens
        assert reply.json()["choices"][0]["message"]["content"] == expected.output
    assert replies[1].json()["usage"]["prompt_tokens"] < replies[9].json()["usage"]["prompt_tokens"]
    assert _ask(http, "tiled").json()["usage"] == replies[9].json()["usage"]  # the model's own: 9


def test_concurrent_requests_with_different_max_partition_share_a_batch(tiled_http):
    from concurrent.futures import ThreadPoolExecutor

    service, http = tiled_http
    before = service.batcher.stats.batches
    with ThreadPoolExecutor(3) as pool:
        replies = list(pool.map(lambda n: _ask(http, "tiled", max_partition=n), (1, 2, 9)))
    assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
    assert service.batcher.stats.batches - before < 3  # at least two of them generated together
    alone = [_ask(http, "tiled", max_partition=n).json() for n in (1, 2, 9)]
    assert [r.json()["choices"][0]["message"]["content"] for r in replies] == [
        a["choices"][0]["message"]["content"] for a in alone
    ]


@pytest.mark.parametrize(
    ("value", "words"),
    [(0, "at least 1"), (13, "limit is 12"), (True, "boolean"), (2.5, "integer"), ("4", "integer")],
)
def test_bad_max_partition_is_a_400_naming_the_field(tiled_http, value, words):
    _, http = tiled_http
    reply = _ask(http, "tiled", max_partition=value)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert "max_partition" in (error["param"] or "") and words in error["message"], error


def test_a_v1_model_refuses_max_partition_over_http(chatty_model_dir, served):
    httpx = pytest.importorskip("httpx")
    with served(chatty_model_dir, runner={"max_new_tokens": 2}, model_name="chatty") as (_, server):
        with httpx.Client(base_url=server.url, timeout=120) as http:
            reply = _ask(http, "chatty", max_partition=4)
            assert reply.status_code == 400 and reply.json()["error"]["param"] == "max_partition"
            assert "v1 layout" in reply.json()["error"]["message"]
            assert _ask(http, "chatty").status_code == 200


# -- the command line ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiled_dir(tmp_path_factory):
    from ovis.composer import save

    torch.manual_seed(0)
    model, processor = ovis.compose(
        vit="clip-tiny", llm="qwen2.5-tiny", visual_vocab_size=256, max_partition=9, hidden_stride=2
    )
    return save(model, processor, tmp_path_factory.mktemp("tiled-cli") / "tiled")


def test_ovis_run_takes_max_partition(tiled_dir, tmp_path, capsys):
    import json

    from ovis.cli import main

    path = tmp_path / "wide.png"
    _wide_image().save(path)
    base = ["run", "--model", str(tiled_dir), "--image", str(path), "What?", "--max-new-tokens", "2", "--json"]
    tokens = {}
    for n in (1, 9):
        assert main([*base, "--dtype", "float32", "--max-partition", str(n)]) == 0
        tokens[n] = json.loads(capsys.readouterr().out)["prompt_tokens"]
    assert tokens[1] < tokens[9]
    assert main([*base, "--max-partition", "0"]) == 2
    assert "max_partition must be a whole number >= 1, got 0" in capsys.readouterr().err


def test_ovis_run_refuses_max_partition_for_a_v1_model(chatty_model_dir, capsys):
    from ovis.cli import main

    assert main(["run", "--model", str(chatty_model_dir), "hi", "--max-partition", "4"]) == 2
    assert "v1 layout" in capsys.readouterr().err


# -- ovis eval: VLMEvalKit's Ovis2 defaults ----------------------------------------------------------
def test_ocr_benchmarks_are_matched_by_name():
    from ovis.eval.partition import is_ocr_benchmark

    for name in ("TextVQA_VAL", "ChartQA_TEST", "DocVQA_VAL", "InfoVQA_VAL", "OCRBench", "ocrbench", "docvqa-test"):
        assert is_ocr_benchmark(name), name
    for name in ("MMBench_DEV_EN", "MMStar", "AI2D_TEST", "MME", "HallusionBench", "OCR"):
        assert not is_ocr_benchmark(name), name


@pytest.mark.parametrize(
    ("benchmark", "override", "images", "video", "expected"),
    [
        ("MMStar", None, 1, False, 9),
        ("DocVQA_VAL", None, 1, False, 12),
        ("DocVQA_VAL", None, 3, False, 12),  # the OCR rule comes first, as in VLMEvalKit
        ("MMMU_DEV_VAL", None, 2, False, 6),
        ("MMMU_DEV_VAL", None, 5, False, 2),
        ("MMMU_DEV_VAL", None, 20, False, 1),  # at least 1
        ("MMStar", None, 1, True, 1),  # video frames: one tile
        ("MMStar", 4, 3, False, 4),  # --max-partition: every image
        ("DocVQA_VAL", 4, 1, True, 1),
    ],
)
def test_item_partition_follows_vlmevalkit(benchmark, override, images, video, expected):
    from ovis.eval.partition import item_partition, partition_setting

    assert item_partition(partition_setting(benchmark, override), images, video=video) == expected


class RecordingRunner:
    """A real runner that records the max_partition each question is prepared with."""

    def __init__(self, runner):
        self.runner, self.args, self.model, self.processor = runner, runner.args, runner.model, runner.processor
        self.seen: list[int | None] = []

    def prepare(self, *args, max_partition=None, **kwargs):
        self.seen.append(max_partition)
        return self.runner.prepare(*args, max_partition=max_partition, **kwargs)

    def generate(self, requests):
        return self.runner.generate(requests)


def _png(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _vqa_rows(images_per_row: int):
    import base64
    import json

    picture = base64.b64encode(_png(_wide_image())).decode()
    cell = picture if images_per_row == 1 else json.dumps([picture] * images_per_row)
    return [{"index": i, "image": cell, "question": f"Text {i}?", "answer": "x"} for i in range(2)]


def test_eval_uses_the_defaults_and_records_them_in_the_fingerprint(tiled_runner, tmp_path):
    from ovis.eval.predictions import StalePredictionsError
    from ovis.eval.run import evaluate_file
    from ovis.eval.tsv import write_benchmark

    tiled_runner.args.model_path = str(tmp_path / "not-a-dir")  # the fingerprint needs a name only
    cases = [
        ("MMStar", 1, None, [9, 9]),
        ("DocVQA_VAL", 1, None, [12, 12]),
        ("MMMU_DEV_VAL", 3, None, [4, 4]),
        ("TextVQA_VAL", 1, 2, [2, 2]),
    ]
    for name, per_row, override, expected in cases:
        path = tmp_path / f"{name}.tsv"
        write_benchmark(path, _vqa_rows(per_row))
        runner = RecordingRunner(tiled_runner)
        report = evaluate_file(
            runner, path, tmp_path / "out", kind="vqa", max_new_tokens=2, progress=False, max_partition=override
        )
        assert runner.seen == expected, name
        rule = "fixed" if override else "vlmevalkit-ovis2"
        base = override or expected[0] if per_row == 1 else 9
        assert report["fingerprint"]["generation"]["max_partition"] == {"rule": rule, "max_partition": base}
    # predictions made under one setting are not reused under another
    with pytest.raises(StalePredictionsError, match="max_partition"):
        evaluate_file(
            RecordingRunner(tiled_runner),
            tmp_path / "MMStar.tsv",
            tmp_path / "out",
            kind="vqa",
            max_new_tokens=2,
            progress=False,
            max_partition=3,
        )


def test_eval_on_a_v1_model_sets_no_tiles_and_refuses_max_partition(chatty_runner, tmp_path):
    from ovis.eval.run import evaluate_file
    from ovis.eval.tsv import write_benchmark

    path = tmp_path / "DocVQA_VAL.tsv"
    write_benchmark(path, _vqa_rows(1))
    runner = RecordingRunner(chatty_runner)
    report = evaluate_file(runner, path, tmp_path / "out", kind="vqa", max_new_tokens=2, progress=False)
    assert runner.seen == [None, None] and "max_partition" not in report["fingerprint"]["generation"]
    with pytest.raises(ConfigError, match="v1 layout"):
        evaluate_file(runner, path, tmp_path / "out2", kind="vqa", max_new_tokens=2, progress=False, max_partition=4)


def test_ovis_eval_max_partition_flag(tiled_dir, chatty_model_dir, tmp_path, capsys):
    import json

    from ovis.cli import main
    from ovis.eval.tsv import write_benchmark

    path = tmp_path / "ChartQA_TEST.tsv"
    write_benchmark(path, _vqa_rows(1))
    base = ["eval", "--data", str(path), "--kind", "vqa", "--max-new-tokens", "2", "--dtype", "float32"]
    assert main([*base, "--model", str(tiled_dir), "--out", str(tmp_path / "a")]) == 0
    results = json.loads((tmp_path / "a" / "ChartQA_TEST" / "results.json").read_text())
    assert results["fingerprint"]["generation"]["max_partition"] == {"rule": "vlmevalkit-ovis2", "max_partition": 12}
    assert main([*base, "--model", str(tiled_dir), "--out", str(tmp_path / "a")]) == 0  # same setting: reused
    capsys.readouterr()
    # a different setting with the same output directory: refused before the model loads
    assert main([*base, "--model", str(tiled_dir), "--out", str(tmp_path / "a"), "--max-partition", "4"]) == 2
    assert "max_partition" in capsys.readouterr().err
    assert main([*base, "--model", str(chatty_model_dir), "--out", str(tmp_path / "b"), "--max-partition", "4"]) == 2
    assert "v1 layout" in capsys.readouterr().err
