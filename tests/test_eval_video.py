"""``ovis eval`` on video benchmarks: Video-MME's TSV and a generic video multiple-choice TSV, with tiny
videos made here with PyAV (a few flat-coloured 32x32 frames), run on the tiny composed models."""

from __future__ import annotations

import io
import json

import pytest
import torch
from PIL import Image

from ovis.cli import main
from ovis.eval.extract import videomme_choice
from ovis.eval.predictions import StalePredictionsError
from ovis.eval.prompts import build_prompt
from ovis.eval.run import evaluate_file, summary_table
from ovis.eval.tsv import BenchmarkError, write_benchmark
from ovis.eval.video_bench import breakdown, read_video_benchmark
from ovis.interfaces.video import load_video

av = pytest.importorskip("av")

INSTRUCTION = (
    "These are the frames of a video. Select the best answer to the following multiple-choice question "
    "based on the video. Respond with only the letter ({}) of the correct option."
)


def make_video(colours, fmt: str = "mp4", size: int = 32) -> bytes:
    """A video whose frame i is a flat colours[i]."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska" if fmt == "mkv" else fmt) as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        for c in colours:
            for packet in stream.encode(av.VideoFrame.from_image(Image.new("RGB", (size, size), c))):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def ramp(base: tuple[int, int, int], n: int = 6) -> list[tuple[int, int, int]]:
    return [(base[0], base[1], min(255, base[2] + 30 * i)) for i in range(n)]


CANDIDATES = str(["A. Red.", "B. Green.", "C. Blue.", "D. Black."])


def videomme_dir(tmp_path, **changes):
    """Video-MME as VLMEvalKit lays it out: Video-MME.tsv beside video/{id}.mp4, three videos."""
    (tmp_path / "video").mkdir()
    for vid, colour in (("001", (200, 20, 20)), ("002", (20, 200, 20)), ("003", (20, 20, 200))):
        (tmp_path / "video" / f"{vid}.mp4").write_bytes(make_video(ramp(colour)))
    rows = []
    for i, (vid, duration, domain, task, answer) in enumerate(
        [
            ("001", "short", "Knowledge", "Counting Problem", "A"),
            ("001", "short", "Knowledge", "OCR Problems", "A"),
            ("002", "medium", "Life Record", "Counting Problem", "B"),
            ("003", "long", "Life Record", "OCR Problems", "C"),
        ]
    ):
        rows.append(
            {
                "index": i,
                "video": vid,
                "video_path": f"./video/{vid}.mp4",
                "duration": duration,
                "domain": domain,
                "candidates": CANDIDATES,
                "sub_category": "Geography",
                "task_type": task,
                "question": "What colour is the video mostly?",
                "answer": answer,
            }
        )
    for index, values in changes.items():
        rows[int(index.removeprefix("row"))].update(values)
    return write_benchmark(tmp_path / "Video-MME.tsv", rows)


def generic_dir(tmp_path):
    """A generic video-MCQ TSV: ``video`` is a path under the video root, options in columns A..C."""
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "red.mkv").write_bytes(make_video(ramp((220, 30, 30)), "mkv"))
    (tmp_path / "clips" / "blue.mp4").write_bytes(make_video(ramp((30, 30, 220))))
    rows = [
        {
            "index": 0,
            "video": "clips/red.mkv",
            "question": "Which colour?",
            "A": "red",
            "B": "blue",
            "C": "green",
            "answer": "A",
            "category": "colour",
        },
        {
            "index": 1,
            "video": "clips/blue.mp4",
            "question": "Which colour?",
            "A": "red",
            "B": "blue",
            "C": "green",
            "answer": "B",
            "category": "colour",
        },
    ]
    return write_benchmark(tmp_path / "my_videos.tsv", rows)


class CountingRunner:
    """Wraps a real runner; counts the questions asked and keeps the requests prepared."""

    def __init__(self, runner):
        self.runner, self.asked, self.requests = runner, 0, []
        self.args, self.model = runner.args, runner.model
        self.processor = runner.processor

    def prepare(self, *args, **kwargs):
        request = self.runner.prepare(*args, **kwargs)
        self.requests.append(request)
        return request

    def generate(self, requests):
        self.asked += len(requests)
        return self.runner.generate(requests)


# -- reading ------------------------------------------------------------------------------------------
def test_reads_videomme_and_builds_its_prompt(tmp_path):
    bench = read_video_benchmark(videomme_dir(tmp_path))
    assert bench.modality == "video" and bench.kind == "mcq" and len(bench) == 4 and not bench.bad_rows
    first = bench.items[0]
    assert first.options == {"A": "Red.", "B": "Green.", "C": "Blue.", "D": "Black."}
    assert first.video == tmp_path / "video" / "001.mp4"
    assert first.extra["duration"] == "short" and first.extra["task_type"] == "Counting Problem"
    text, images = build_prompt(first, "mcq")
    assert images == []
    assert text == (
        "<video>\n" + INSTRUCTION.format("A, B, C, or D") + "\nQuestion: What colour is the video mostly?"
        "\nA. Red.\nB. Green.\nC. Blue.\nD. Black.\nAnswer:"
    )
    assert build_prompt(first, "mcq", "plain") == ("<video>\nWhat colour is the video mostly?", [])


def test_candidates_with_quotes_and_without_letters(tmp_path):
    quoted = str(["A. The man's hat.", 'B. A "red" car.', "C. Both."])
    bench = read_video_benchmark(
        videomme_dir(tmp_path, row0={"candidates": quoted}, row1={"candidates": '["cat", "dog"]', "answer": "B"})
    )
    assert bench.items[0].options == {"A": "The man's hat.", "B": 'A "red" car.', "C": "Both."}
    assert bench.items[1].options == {"A": "cat", "B": "dog"}
    assert "(A or B)" in build_prompt(bench.items[1], "mcq")[0]


def test_videomme_ids_are_found_under_a_video_root_without_video_path(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    path = videomme_dir(data, **{f"row{i}": {"video_path": ""} for i in range(4)})
    elsewhere = tmp_path / "elsewhere.tsv"
    elsewhere.write_bytes(path.read_bytes())
    # the dataset root (video/ID.mp4 there), and the video folder itself (ID.mp4 there)
    for root in (data, data / "video"):
        bench = read_video_benchmark(elsewhere, video_root=root)
        assert [item.video.name for item in bench.items] == ["001.mp4", "001.mp4", "002.mp4", "003.mp4"]


def test_reads_a_generic_video_tsv(tmp_path):
    bench = read_video_benchmark(generic_dir(tmp_path))
    assert [item.video.name for item in bench.items] == ["red.mkv", "blue.mp4"]
    text, _ = build_prompt(bench.items[1], "mcq")
    assert text.splitlines()[1] == INSTRUCTION.format("A, B, or C")
    assert text.endswith("Question: Which colour?\nA. red\nB. blue\nC. green\nAnswer:")


def test_missing_and_corrupt_videos_are_bad_rows_naming_the_file(tmp_path):
    path = videomme_dir(tmp_path)
    (tmp_path / "video" / "002.mp4").unlink()
    (tmp_path / "video" / "001.mp4").write_bytes(b"not a video at all" * 10)
    bench = read_video_benchmark(path)
    assert [item.index for item in bench.items] == ["3"]
    assert [bad["index"] for bad in bench.bad_rows] == ["0", "1", "2"]
    assert "001.mp4: could not be decoded as a video" in bench.bad_rows[0]["reason"]
    assert bench.bad_rows[0]["reason"] == bench.bad_rows[1]["reason"]  # the same video, probed once
    assert "video: video file" in bench.bad_rows[2]["reason"] and "002.mp4 not found" in bench.bad_rows[2]["reason"]


def test_a_file_whose_every_video_is_unusable_is_refused_not_scored_zero(tmp_path):
    path = videomme_dir(tmp_path)
    for video in (tmp_path / "video").iterdir():
        video.unlink()
    with pytest.raises(BenchmarkError, match=r"none of its 4 rows has a usable video \(row 1, index 0: video: "):
        read_video_benchmark(path)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"question": ""}, r"row 2 \(index 1\): empty question"),
        ({"answer": ""}, r"row 2 \(index 1\): empty answer"),
        ({"candidates": "['A. only one']"}, r"row 2 \(index 1\): a multiple-choice question needs at least two"),
        ({"candidates": "A. red | B. blue"}, r"row 2 \(index 1\): candidates 'A. red \| B. blue' is not a list"),
        ({"answer": "E"}, r"row 2 \(index 1\): answer 'E' is not one of its options \(A, B, C, D\)"),
    ],
)
def test_rows_without_question_answer_or_options_are_errors_naming_them(tmp_path, change, words):
    with pytest.raises(BenchmarkError, match=words):
        read_video_benchmark(videomme_dir(tmp_path, row1=change))


def test_missing_columns_and_kinds_are_named(tmp_path):
    path = tmp_path / "v.tsv"
    path.write_text("index\tvideo\tquestion\tanswer\n0\ta.mp4\tq\tA\n")
    with pytest.raises(BenchmarkError, match="missing column.*candidates or option columns A, B"):
        read_video_benchmark(path)
    with pytest.raises(BenchmarkError, match="a video benchmark is multiple choice; --kind vqa"):
        read_video_benchmark(videomme_dir(tmp_path), kind="vqa")


def test_videomme_reading_rule():
    assert videomme_choice("The answer is B.") == "B"
    assert videomme_choice("(D)") == "D"
    assert videomme_choice("Clearly, the video is red") == "C"  # crude: the C of "Clearly"
    assert videomme_choice("the video is red") is None
    assert videomme_choice("E", "ABCDE") == "E" and videomme_choice("E") is None


def test_breakdown_by_duration_domain_and_task_type(tmp_path):
    bench = read_video_benchmark(videomme_dir(tmp_path))
    hits = {"0": True, "1": False, "2": True, "3": False}
    result = breakdown(bench, [{"index": i, "hit": h} for i, h in hits.items()])
    assert list(result) == ["overall", "short", "medium", "long"]
    assert result["overall"]["accuracy"] == 0.5 and result["overall"]["questions"] == 4
    assert [result[d]["accuracy"] for d in ("short", "medium", "long")] == [0.5, 1.0, 0.0]
    assert result["overall"]["domain"]["Life Record"] == {"questions": 2, "accuracy": 0.5}
    assert result["overall"]["task_type"]["Counting Problem"] == {"questions": 2, "accuracy": 1.0}
    assert result["short"]["task_type"] == {
        "Counting Problem": {"questions": 1, "accuracy": 1.0},
        "OCR Problems": {"questions": 1, "accuracy": 0.0},
    }


# -- running ------------------------------------------------------------------------------------------
def test_eval_writes_predictions_scores_and_the_breakdown(chatty_runner, tmp_path):
    path = videomme_dir(tmp_path)
    runner = CountingRunner(chatty_runner)
    report = evaluate_file(runner, path, tmp_path / "out", nframe=3, max_new_tokens=2, progress=False)
    out = tmp_path / "out" / "Video-MME"
    assert runner.asked == 4 and report["answered"] == 4 and report["nframe"] == 3
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    stamp = lines[0]["fingerprint"]
    assert stamp["video"]["nframe"] == 3 and sorted(stamp["video"]["files"]) == [
        "video/001.mp4",
        "video/002.mp4",
        "video/003.mp4",
    ]
    assert stamp["video"]["sampling"]["from_1000_frames"] == [0, 500, 999]
    assert sorted(line["index"] for line in lines[1:]) == ["0", "1", "2", "3"]
    # the v1-layout model: each request holds 3 frames as 3 images
    assert all(request.sample.pixel_values.shape[0] == 3 for request in runner.requests)
    results = json.loads((out / "results.json").read_text())
    readings = [json.loads(line) for line in (out / "readings.jsonl").read_text().splitlines()]
    hits = {r["index"]: r["hit"] for r in readings}
    assert results["metrics"]["accuracy"] == pytest.approx(sum(hits.values()) / 4)
    assert results["breakdown"]["short"]["accuracy"] == pytest.approx((hits["0"] + hits["1"]) / 2)
    assert results["breakdown"]["long"]["task_type"]["OCR Problems"]["accuracy"] == float(hits["3"])
    assert "videomme_rule_accuracy" in results["metrics"]
    categories = [line.split(",")[0] for line in (out / "results.csv").read_text().splitlines()[1:]]
    assert categories[:4] == ["overall", "duration: short", "duration: medium", "duration: long"]
    assert "task_type: OCR Problems" in categories and "domain: Knowledge" in categories
    table = summary_table([report])
    assert "| Video-MME | mcq | 4 | accuracy (videomme_rule_accuracy" in table
    short = 100 * (hits["0"] + hits["1"]) / 2
    assert f"Video-MME: video, 3 frames each; by duration: short {short:.1f}% (2), medium" in table


def test_changed_nframe_or_video_is_never_answered_from_stale_predictions(chatty_runner, tmp_path):
    path = videomme_dir(tmp_path)
    runner = CountingRunner(chatty_runner)
    options = {"max_new_tokens": 2, "progress": False}
    evaluate_file(runner, path, tmp_path / "out", nframe=2, limit=1, **options)  # a smoke run, then the rest
    assert runner.asked == 1
    evaluate_file(runner, path, tmp_path / "out", nframe=2, **options)
    assert runner.asked == 4
    runner.asked = 0
    evaluate_file(runner, path, tmp_path / "out", nframe=2, **options)
    assert runner.asked == 0  # the same setup: nothing asked again
    with pytest.raises(StalePredictionsError, match=r"frames per video \(nframe\) 2 -> 3"):
        evaluate_file(runner, path, tmp_path / "out", nframe=3, **options)
    evaluate_file(runner, path, tmp_path / "out", nframe=3, discard_stale=True, **options)
    assert runner.asked == 4  # changing nframe reruns every question
    (tmp_path / "video" / "002.mp4").write_bytes(make_video(ramp((90, 90, 90), 8)))
    with pytest.raises(StalePredictionsError, match=r"the video files \(added, removed or changed: video/002.mp4\)"):
        evaluate_file(runner, path, tmp_path / "out", nframe=3, **options)


def test_a_video_failing_mid_run_is_recorded_and_the_rest_answered(chatty_runner, tmp_path, monkeypatch):
    import ovis.eval.video_bench as video_bench
    from ovis.interfaces.video import VideoError

    path = videomme_dir(tmp_path)

    def failing(video, num_frames, *, what=None):
        if video.name == "001.mp4":
            raise VideoError(f"{what}: could not be decoded as a video (truncated)")
        return load_video(video, num_frames, what=what)

    monkeypatch.setattr(video_bench, "load_video", failing)
    report = evaluate_file(chatty_runner, path, tmp_path / "out", nframe=2, max_new_tokens=2, progress=False)
    assert report["answered"] == 2 and report["errors"] == 2
    lines = (tmp_path / "out" / "Video-MME" / "predictions.jsonl").read_text().splitlines()
    errors = [json.loads(line) for line in lines if '"error"' in line]
    assert [e["index"] for e in errors] == ["0", "1"] and "Video-MME row 0 video" in errors[0]["error"]
    assert "001.mp4: could not be decoded" in errors[0]["error"]


def test_circular_on_video_decodes_each_video_once(chatty_runner, tmp_path, monkeypatch):
    import ovis.eval.video_bench as video_bench

    decoded = []

    def counting(video, num_frames, *, what=None):
        decoded.append(video.name)
        return load_video(video, num_frames, what=what)

    monkeypatch.setattr(video_bench, "load_video", counting)
    runner = CountingRunner(chatty_runner)
    report = evaluate_file(
        runner, generic_dir(tmp_path), tmp_path / "out", circular=True, nframe=2, max_new_tokens=2, progress=False
    )
    assert runner.asked == 6 and report["rotations"] == 6 and report["questions"] == 2
    assert decoded == ["red.mkv", "blue.mp4"]  # three rotations per video, one decode
    assert report["breakdown"]["overall"]["questions"] == 2  # the first rotation of each question
    assert "category" not in report["breakdown"]["overall"] and "colour" in report["categories"]


def test_the_frames_eval_feeds_are_the_runners_own_for_the_file(tmp_path):
    import ovis
    from ovis.serve.runner import OvisRunner, RunnerArguments

    torch.manual_seed(0)
    model, processor = ovis.compose(
        vit="clip-tiny", llm="qwen2.5-tiny", visual_vocab_size=256, max_partition=9, hidden_stride=2
    )
    tiled = OvisRunner(RunnerArguments(model_path="<tiny>", max_new_tokens=2), model=model.eval(), processor=processor)
    path = generic_dir(tmp_path)
    runner = CountingRunner(tiled)
    report = evaluate_file(runner, path, tmp_path / "out", nframe=4, max_partition=6, progress=False)
    assert report["fingerprint"]["generation"]["max_partition"] == {"rule": "video-frames", "max_partition": 1}
    bench = read_video_benchmark(path)
    for item, request in zip(bench.items, runner.requests, strict=True):
        direct = tiled.prepare(build_prompt(item, "mcq")[0], videos=[item.video], num_frames=4)
        assert request.sample.grids == [(1, 1)] * 4  # one tile per frame, whatever --max-partition says
        assert request.sample.input_ids == direct.sample.input_ids
        torch.testing.assert_close(request.sample.pixel_values, direct.sample.pixel_values, rtol=0, atol=0)


# -- the command line ---------------------------------------------------------------------------------
def test_cli_eval_on_a_video_benchmark(chatty_model_dir, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    path = videomme_dir(data, row2={"video_path": ""})
    (data / "video" / "003.mp4").unlink()
    out = tmp_path / "out"
    argv = [
        "eval",
        "--model",
        str(chatty_model_dir),
        "--data",
        str(path),
        "--out",
        str(out),
        "--nframe",
        "2",
        "--max-new-tokens",
        "2",
        "--video-root",
        str(data),
        "--dtype",
        "float32",
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "Video-MME: mcq on video, 2 frames each, 3 questions, 1 row left out (unusable videos; e.g. row" \
        in captured.err
    assert "003.mp4 not found" in captured.err and "; all in results.json)" in captured.err
    assert "| Video-MME | mcq | 3 |" in captured.out
    results = json.loads((out / "Video-MME" / "results.json").read_text())
    assert results["bad_rows"] == 1 and "003.mp4 not found" in results["bad_row_reasons"][0]["reason"]
    assert results["fingerprint"]["video"]["nframe"] == 2
    assert main([*argv[:-4], "--video-root", str(tmp_path / "nowhere")]) == 2
    error = capsys.readouterr().err
    assert "--video-root" in error and "nowhere: not a directory" in error
