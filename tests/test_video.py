"""Video in prompts: frames sampled uniformly with PyAV (or from a list), each a single tile, expanded
as one image block per frame; in the runner and in the HTTP API (``video_url`` data: URLs). The
videos are made here with PyAV itself: a few frames of known colours."""

from __future__ import annotations

import base64
import io
import sys

import pytest
import torch
from PIL import Image

import ovis
from ovis.errors import UsageError
from ovis.interfaces import ChatFormatError
from ovis.interfaces.video import VideoError, expand_videos, load_video, sample_indices
from ovis.serve.runner import OvisRunner, RunnerArguments

av = pytest.importorskip("av")

FRAMES = 10


def colour(i: int) -> tuple[int, int, int]:
    return ((i * 25) % 256, 100, 200 - i * 15)


def make_video(frames: int = FRAMES, size: tuple[int, int] = (64, 48)) -> bytes:
    """An MPEG-4 video whose frame i is a flat colour(i)."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_image(Image.new("RGB", size, colour(i)))
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def close(a, b, tol: int = 12) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


def test_sample_indices_spread_evenly():
    assert sample_indices(10, 4) == [0, 3, 6, 9]
    assert sample_indices(3, 8) == [0, 1, 2]
    assert sample_indices(9, 1) == [4]
    assert sample_indices(100, 5) == [0, 25, 50, 74, 99]


def test_frames_are_sampled_uniformly_from_a_file_and_from_bytes(tmp_path):
    data = make_video()
    path = tmp_path / "clip.mp4"
    path.write_bytes(data)
    for source in (path, str(path), data):
        frames = load_video(source, 4)
        assert len(frames) == 4 and all(f.mode == "RGB" and f.size == (64, 48) for f in frames)
        for frame, index in zip(frames, [0, 3, 6, 9], strict=True):
            assert close(frame.getpixel((32, 24)), colour(index)), (frame.getpixel((32, 24)), index)
    assert len(load_video(data, 50)) == FRAMES  # fewer frames than asked: all of them


def test_a_list_of_frames_is_sampled_too():
    frames = [Image.new("RGB", (8, 8), colour(i)) for i in range(FRAMES)]
    picked = load_video(frames, 4)
    assert [f.getpixel((0, 0)) for f in picked] == [colour(i) for i in (0, 3, 6, 9)]


@pytest.mark.parametrize("data", [b"not a video at all", make_video()[:300]])
def test_a_corrupt_video_is_a_clean_error_naming_it(data, tmp_path):
    with pytest.raises(VideoError, match="clip.mp4"):
        path = tmp_path / "clip.mp4"
        path.write_bytes(data)
        load_video(path, 4)


def test_a_missing_file_and_bad_num_frames_are_named(tmp_path):
    with pytest.raises(VideoError, match="nope.mp4: no such video file"):
        load_video(tmp_path / "nope.mp4")
    with pytest.raises(ovis.errors.ConfigError, match="num_frames"):
        load_video(make_video(), 0)


def test_without_pyav_a_file_asks_for_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # import av -> ImportError
    with pytest.raises(UsageError, match=r"pip install 'ovis\[video\]'"):
        load_video(make_video(), 2)
    assert len(load_video([Image.new("RGB", (4, 4))] * 3, 2)) == 2  # frames need no decoder


def test_expand_videos_puts_frame_markers_in_order():
    a, b = object(), object()
    frames = [object(), object()]
    messages, images, is_frame = expand_videos(
        [{"role": "user", "content": "<image> then <video> then <image>"}], [a, b], [frames]
    )
    assert messages[0].content == "<image> then <image>\n<image> then <image>"
    assert images == [a, *frames, b] and is_frame == [False, True, True, False]
    messages, _, _ = expand_videos([{"role": "user", "content": "what?"}], [], [frames])
    assert messages[0].content == "<video>\nwhat?".replace("<video>", "<image>\n<image>")
    with pytest.raises(ChatFormatError, match="1 <video> marker"):
        expand_videos([{"role": "user", "content": "<video>"}], [], [])


@pytest.fixture(scope="module")
def tiled_runner():
    torch.manual_seed(0)
    model, processor = ovis.compose(
        vit="clip-tiny", llm="qwen2.5-tiny", visual_vocab_size=256, max_partition=9, hidden_stride=2
    )
    return OvisRunner(RunnerArguments(model_path="<tiny>", max_new_tokens=4), model=model.eval(), processor=processor)


def test_the_runner_reads_a_video_as_single_tile_frames(tiled_runner, tmp_path):
    path = tmp_path / "clip.mp4"
    path.write_bytes(make_video())
    big = Image.new("RGB", (400, 100), "white")
    request = tiled_runner.prepare("<image> and <video>: what changes?", [big], videos=[path], num_frames=3)
    grids = request.sample.grids
    assert len(grids) == 4 and grids[1:] == [(1, 1)] * 3  # frames: one tile each
    assert grids[0][0] * grids[0][1] > 1  # the image keeps the model's max_partition
    # the same as the frames given as images, one tile each, one per line (the Ovis2 release's layout)
    same = tiled_runner.processor.encode(
        [{"role": "user", "content": "<image> and <image>\n<image>\n<image>: what changes?"}],
        [big, *load_video(path, 3)],
        add_generation_prompt=True,
        max_partition=[None, 1, 1, 1],
    )
    assert request.sample.input_ids == same.input_ids
    torch.testing.assert_close(request.sample.pixel_values, same.pixel_values, rtol=0, atol=0)
    result = tiled_runner.run(None, "What changes?", video=path, num_frames=3)
    assert result["prompt_tokens"] > 3 * 4 and result["total_tokens"] > result["prompt_tokens"]


def test_a_v1_model_takes_frames_as_images():
    torch.manual_seed(0)
    model, processor = ovis.compose(vit="clip-tiny", llm="qwen2.5-tiny", visual_vocab_size=256)
    runner = OvisRunner(RunnerArguments(model_path="<v1>", max_new_tokens=2), model=model.eval(), processor=processor)
    frames = [Image.new("RGB", (32, 32), colour(i)) for i in range(5)]
    request = runner.prepare("What?", videos=[frames], num_frames=5)
    assert request.sample.pixel_values.shape[0] == 5
    assert runner.run(None, "What?", video=frames, num_frames=2)["prompt_tokens"] > 0


# -- the HTTP API -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def http_service(chatty_model_dir, served):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    from ovis.serve.limits import ServeLimits

    limits = ServeLimits(max_video_bytes=20_000, max_video_frames=6, max_videos=1, max_new_tokens=8)
    with served(
        chatty_model_dir, runner={"max_new_tokens": 4, "dtype": "float32"}, limits=limits, model_name="chatty"
    ) as (service, server):
        with httpx.Client(base_url=server.url, timeout=120) as http:
            yield service, http


def video_part(data: bytes, mime: str = "video/mp4") -> dict:
    return {"type": "video_url", "video_url": {"url": f"data:{mime};base64,{base64.b64encode(data).decode()}"}}


def ask(http, content, **extra):
    body = {"model": "chatty", "messages": [{"role": "user", "content": content}], "max_tokens": 4, **extra}
    return http.post("/v1/chat/completions", json=body)


def test_a_video_url_part_answers_as_the_runner_does_with_its_frames(http_service):
    service, http = http_service
    data = make_video()
    reply = ask(http, [video_part(data), {"type": "text", "text": "what changes?"}], num_frames=3)
    assert reply.status_code == 200, reply.text
    runner = service.runner
    params = service.params(max_new_tokens=4)
    request = runner.prepare("<video>\nwhat changes?", None, params, videos=[load_video(data, 3)], num_frames=3)
    expected = runner.generate([request])[0]
    assert reply.json()["choices"][0]["message"]["content"] == expected.output
    assert reply.json()["usage"]["prompt_tokens"] == expected.prompt_tokens


@pytest.mark.parametrize(
    ("content", "extra", "status", "param", "words"),
    [
        ([video_part(b"garbage, not a video")], {}, 400, "messages[0].content[0].video_url", "could not be decoded"),
        ([video_part(make_video()[:400])], {}, 400, "messages[0].content[0].video_url", "video"),
        ([video_part(b"x" * 30_000)], {}, 413, "messages[0].content[0].video_url", "limit is 20,000"),
        ([video_part(make_video())] * 2, {}, 400, "messages", "2 videos; the limit is 1"),
        ([video_part(make_video())], {"num_frames": 7}, 400, "num_frames", "limit is 6"),
        ([video_part(make_video())], {"num_frames": True}, 400, "num_frames", "boolean"),
        ("a typed <video> marker", {}, 400, "messages[0].content", "video_url parts"),
        (
            [{"type": "video_url", "video_url": {"url": "https://example.com/a.mp4"}}],
            {},
            400,
            "messages[0].content[0].video_url",
            "only data: URLs",
        ),
    ],
)
def test_bad_videos_are_refused_naming_the_field(http_service, content, extra, status, param, words):
    _, http = http_service
    reply = ask(http, content, **extra)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert words in error["message"] and param in (error["param"] or ""), error


def test_ovis_run_takes_a_video(chatty_model_dir, tmp_path, capsys):
    import json

    from ovis.cli import main
    from ovis.serve.runner import OvisRunner, RunnerArguments

    path = tmp_path / "clip.mp4"
    path.write_bytes(make_video())
    args = ["run", "--model", str(chatty_model_dir), "--video", str(path), "--num-frames", "3", "What changes?"]
    assert main([*args, "--max-new-tokens", "3", "--json", "--dtype", "float32"]) == 0
    result = json.loads(capsys.readouterr().out)
    runner = OvisRunner(RunnerArguments(model_path=str(chatty_model_dir), max_new_tokens=3, dtype="float32"))
    assert result == runner.run(None, "What changes?", video=path, num_frames=3)
    assert main(["run", "--model", str(chatty_model_dir), "--video", str(tmp_path / "gone.mp4"), "hi"]) == 2
    assert "gone.mp4): no such video file" in capsys.readouterr().err


def test_a_server_without_pyav_answers_501_saying_so(http_service, monkeypatch):
    _, http = http_service
    monkeypatch.setitem(sys.modules, "av", None)
    reply = ask(http, [video_part(make_video())])
    assert reply.status_code == 501, reply.text
    assert "ovis[video]" in reply.json()["error"]["message"]


def make_long_video(path, frames: int, container_format: str) -> None:
    """A video whose frames differ (a colour per index, in 16 x 16), long enough to be sampled by seeking."""
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        for i in range(frames):
            image = Image.new("RGB", (16, 16), ((i % 32) * 8, (i // 32) * 12, 90))
            for packet in stream.encode(av.VideoFrame.from_image(image)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.mark.parametrize("container_format", ["mp4", "matroska"])
def test_a_long_video_is_sampled_by_seeking_to_the_same_frames(tmp_path, monkeypatch, container_format):
    from ovis.interfaces import video

    path = tmp_path / f"long.{container_format}"
    make_long_video(path, 640, container_format)
    seeks = []
    real_seek = video._seek_frames
    monkeypatch.setattr(video, "_seek_frames", lambda *a: seeks.append(1) or real_seek(*a))
    sought = load_video(path, 7)
    assert seeks, "a video of 640 frames is sampled by seeking"
    monkeypatch.setattr(video, "SEEK_FROM_FRAMES", 10**9)  # every frame decoded, as short videos are
    decoded = load_video(path, 7)
    assert len(sought) == len(decoded) == 7
    assert [f.tobytes() for f in sought] == [f.tobytes() for f in decoded]
    # They are the frames sample_indices names: each frame's colour encodes its index.
    for frame, index in zip(decoded, sample_indices(640, 7), strict=True):
        assert close(frame.getpixel((8, 8))[:2], ((index % 32) * 8, (index // 32) * 12)), index
