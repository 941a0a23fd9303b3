"""``ovis eval``: run a model over benchmark files, resumably, and write scores and a summary table.

For each benchmark, ``OUT/NAME/predictions.jsonl`` starts with the fingerprint of what shapes the
predictions (model files, dtype, generation settings, prompt style, kind, the TSV's hash) and gets
one line per answered question as soon as its batch finishes; a rerun under the same fingerprint
only asks what is missing, and one under another is refused (see :mod:`ovis.eval.predictions`).
Scores go to ``OUT/NAME/results.json`` (with the fingerprint) and ``results.csv`` (every metric,
overall and per category), each reply's reading to ``readings.jsonl``, and ``OUT/summary.md``
holds one markdown table of every benchmark run.

Video benchmarks (:mod:`ovis.eval.video_bench`: a TSV with a ``video`` column and a folder of videos)
run the same way: each question's video is sampled to ``nframe`` frames by the runner's sampler,
the fingerprint adds nframe, the sampling and each video file's identity, and the report adds
Video-MME's breakdown by duration, domain, sub-category and task type.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ovis.errors import ConfigError
from ovis.eval.extract import videomme_choice
from ovis.eval.fingerprint import fingerprint
from ovis.eval.partition import is_tiled_model, item_partition, partition_setting, video_partition_setting
from ovis.eval.predictions import (
    StalePredictionsError,
    open_predictions,
    read_predictions,
    stale_message,
    stale_reasons,
)
from ovis.eval.prompts import build_prompt
from ovis.eval.scoring import JudgeFn, score
from ovis.eval.tsv import Benchmark, Kind, read_benchmark, with_circular
from ovis.eval.video_bench import (
    DEFAULT_NFRAME,
    FrameReader,
    breakdown,
    breakdown_categories,
    is_video_benchmark,
    read_video_benchmark,
    video_setting,
)
from ovis.interfaces.image import load_image

DEFAULT_MAX_NEW_TOKENS = {"mcq": 32, "yesno": 16, "vqa": 32}
__all__ = ["StalePredictionsError", "check_files", "evaluate", "evaluate_file", "predict", "read_predictions",
           "summary_table"]


def check_positive(name: str, value: int | None, *, optional: bool = False) -> None:
    """Refuse counts that would run nothing or run silently wrong (0, negative, not an integer)."""
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def generation_settings(
    args, kind: Kind, max_new_tokens: int | None, *, tiling: dict[str, Any] | None = None
) -> dict:
    """The runner's generation settings for this kind of benchmark, as a dict; with ``tiling`` (a tiled
    model: :func:`ovis.eval.partition.partition_setting`) under ``max_partition``, so predictions made
    with other tiles are not reused."""
    tokens = DEFAULT_MAX_NEW_TOKENS[kind] if max_new_tokens is None else max_new_tokens
    settings = args.generation_params(max_new_tokens=tokens).model_dump(mode="json")
    if tiling is not None:
        settings["max_partition"] = tiling
    return settings


def tiling_for(tiled: bool, benchmark: str, max_partition: int | None, *, video: bool = False
               ) -> dict[str, Any] | None:
    """The benchmark's tiling setting on a tiled model (None on a v1-layout one, which refuses an
    explicit ``max_partition``); a video benchmark's frames are one tile each."""
    if max_partition is not None:
        check_positive("max_partition", max_partition)
        if not tiled:
            raise ConfigError(
                f"max_partition {max_partition}: the model uses the v1 layout (one square per image), which has "
                "no tiles to set; leave --max-partition out"
            )
    if not tiled:
        return None
    return video_partition_setting() if video else partition_setting(benchmark, max_partition)


def load_benchmark(path: str | Path, *, kind: Kind | None = None, video_root: str | Path | None = None) -> Benchmark:
    """A benchmark file, read as a video benchmark when its header says so (a ``video`` column)."""
    if is_video_benchmark(path):
        return read_video_benchmark(path, kind=kind, video_root=video_root)
    return read_benchmark(path, kind=kind)


def stamp_for(bench: Benchmark, *, model_path, dtype: str, generation: dict, prompt_style: str, nframe: int) -> dict:
    """The fingerprint of a benchmark's predictions (with the video setting for a video benchmark)."""
    return fingerprint(model_path=model_path, dtype=dtype, generation=generation, prompt_style=prompt_style,
                       kind=bench.kind, data_path=bench.path,
                       video=video_setting(bench, nframe) if bench.modality == "video" else None)


def _runner_is_tiled(runner) -> bool:
    processor = getattr(runner, "processor", None)
    if processor is not None:
        return getattr(processor, "tiling", None) is not None
    return is_tiled_model(runner.args.model_path)


def runner_dtype(runner) -> str:
    """The dtype the runner's model computes in (or the one asked for, for a runner without a model)."""
    model = getattr(runner, "model", None)
    if model is not None and getattr(model, "dtype", None) is not None:
        return str(model.dtype).removeprefix("torch.")
    return runner.args.dtype or "auto"


def output_dir(out_dir: str | Path, bench: Benchmark, prompt_style: str) -> Path:
    return Path(out_dir) / (bench.name if prompt_style == "vlmevalkit" else f"{bench.name}-{prompt_style}")


def _left_out(bad_rows: list[dict], what: str) -> str:
    """``, N rows left out (unusable images; e.g. row R, index I: reason)``: the first reason shown,
    every one in results.json."""
    first = bad_rows[0]
    rows = "row" if len(bad_rows) == 1 else "rows"
    return (f", {len(bad_rows)} {rows} left out (unusable {what}; e.g. row {first['row']}, index {first['index']}: "
            f"{first['reason']}; all in results.json)")


def check_files(
    files: Sequence[str | Path],
    out_dir: str | Path,
    *,
    runner_args,
    dtype: str,
    kind: Kind | None = None,
    max_new_tokens: int | None = None,
    prompt_style: str = "vlmevalkit",
    discard_stale: bool = False,
    max_partition: int | None = None,
    video_root: str | Path | None = None,
    nframe: int = DEFAULT_NFRAME,
) -> list[str]:
    """Before a model is loaded (minutes at real scale): read and validate every benchmark file and
    refuse saved predictions made differently. Returns one line per file for the user."""
    check_positive("nframe", nframe)
    lines = []
    tiled = is_tiled_model(runner_args.model_path)
    for f in files:
        bench = load_benchmark(f, kind=kind, video_root=video_root)
        video = bench.modality == "video"
        tiling = tiling_for(tiled, bench.name, max_partition, video=video)
        path = output_dir(out_dir, bench, prompt_style) / "predictions.jsonl"
        what = "videos" if video else "images"
        line = (f"{bench.name}: {bench.kind}{f' on video, {nframe} frames each' if video else ''}, "
                f"{len(bench.items)} questions"
                + (_left_out(bench.bad_rows, what) if bench.bad_rows else ""))
        if not discard_stale:
            expected = stamp_for(bench, model_path=runner_args.model_path, dtype=dtype,
                                 generation=generation_settings(runner_args, bench.kind, max_new_tokens, tiling=tiling),
                                 prompt_style=prompt_style, nframe=nframe)
            reasons = stale_reasons(path, expected)
            if reasons:
                raise StalePredictionsError(stale_message(path, reasons))
        lines.append(line)
    return lines


def predict(
    runner,
    bench: Benchmark,
    out: Path,
    *,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    prompt_style: str = "vlmevalkit",
    progress: bool = True,
    discard_stale: bool = False,
    max_partition: int | None = None,
    nframe: int = DEFAULT_NFRAME,
) -> tuple[dict[str, str], dict[str, str], dict]:
    """Answer every item not yet in ``out/predictions.jsonl``; returns (predictions, errors, fingerprint).

    Raises :class:`StalePredictionsError` if that file holds another setup's predictions (unless
    ``discard_stale``)."""
    check_positive("batch_size", batch_size)
    check_positive("max_new_tokens", max_new_tokens, optional=True)
    check_positive("nframe", nframe)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "predictions.jsonl"
    tiling = tiling_for(_runner_is_tiled(runner), bench.name, max_partition, video=bench.modality == "video")
    settings = generation_settings(runner.args, bench.kind, max_new_tokens, tiling=tiling)
    stamp = stamp_for(bench, model_path=runner.args.model_path, dtype=runner_dtype(runner), generation=settings,
                      prompt_style=prompt_style, nframe=nframe)
    frames = FrameReader(nframe)
    predictions, errors = open_predictions(path, stamp, discard_stale=discard_stale)
    todo = [item for item in bench.items if item.index not in predictions and item.index not in errors]
    params = runner.args.generation_params(max_new_tokens=settings["max_new_tokens"])
    bar = tqdm(total=len(bench.items), initial=len(bench.items) - len(todo), desc=bench.name, unit="q",
               disable=not progress)
    with path.open("a", encoding="utf-8") as sink:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start: start + batch_size]
            requests, asked = [], []
            for item in chunk:
                text, images = build_prompt(item, bench.kind, prompt_style)
                try:
                    if item.video is not None:
                        # Frames taken by the runner's own sampler; the runner makes each one tile.
                        clip = frames.frames(item.video, what=f"{bench.name} row {item.index} video {item.video}")
                        requests.append(runner.prepare([{"role": "user", "content": text}], [], params,
                                                       videos=[clip], num_frames=nframe))
                        asked.append(item)
                        continue
                    pictures = [load_image(data, what=f"{bench.name} row {item.index} image {k + 1}")
                                for k, data in enumerate(images)]
                    tiles = item_partition(tiling, len(pictures)) if tiling is not None and pictures else None
                    requests.append(runner.prepare([{"role": "user", "content": text}], pictures, params,
                                                   max_partition=tiles))
                    asked.append(item)
                except (ValueError, OSError) as exc:  # too long, undecodable, too large...: recorded, not fatal
                    errors[item.index] = f"{type(exc).__name__}: {exc}"
                    sink.write(json.dumps({"index": item.index, "error": errors[item.index]}) + "\n")
            for item, completion in zip(asked, runner.generate(requests) if requests else [], strict=True):
                predictions[item.index] = completion.output
                sink.write(json.dumps({"index": item.index, "prediction": completion.output}, ensure_ascii=False)
                           + "\n")
            sink.flush()
            bar.update(len(chunk))
    bar.close()
    return predictions, errors, stamp


def evaluate_file(
    runner,
    path: str | Path,
    out_dir: str | Path,
    *,
    kind: Kind | None = None,
    circular: bool = False,
    relaxed: bool = False,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    limit: int | None = None,
    prompt_style: str = "vlmevalkit",
    progress: bool = True,
    discard_stale: bool = False,
    judge: JudgeFn | None = None,
    max_partition: int | None = None,
    video_root: str | Path | None = None,
    nframe: int = DEFAULT_NFRAME,
) -> dict:
    """Predict (resuming) and score one benchmark file; writes its results and returns the report."""
    check_positive("limit", limit, optional=True)
    bench = load_benchmark(path, kind=kind, video_root=video_root)
    if limit is not None:
        bench.items = bench.items[:limit]
    if circular and bench.kind == "mcq":  # only multiple choice has options to rotate
        bench = with_circular(bench)
    out = output_dir(out_dir, bench, prompt_style)
    predictions, errors, stamp = predict(runner, bench, out, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                         prompt_style=prompt_style, progress=progress, discard_stale=discard_stale,
                                         max_partition=max_partition, nframe=nframe)
    report = score(bench, predictions, relaxed=relaxed, judge_fn=judge)
    readings = report.pop("readings")
    if bench.modality == "video":
        _video_scores(report, bench, predictions, readings, nframe)
    report["errors"] = len([i for i in errors if i not in predictions])
    report["prompt_style"] = prompt_style
    report["bad_row_reasons"] = bench.bad_rows[:20]
    report["fingerprint"] = stamp
    if judge is not None:
        report["judge"] = {"url": getattr(judge, "url", None), "model": getattr(judge, "model", None)}
    (out / "results.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    _write_csv(out / "results.csv", report)
    with (out / "readings.jsonl").open("w", encoding="utf-8") as f:
        for reading in readings:
            f.write(json.dumps({**reading, "prediction": predictions[reading["index"]]}, ensure_ascii=False) + "\n")
    return report


def _video_scores(report: dict, bench: Benchmark, predictions: dict[str, str], readings: list[dict],
                  nframe: int) -> None:
    """Add Video-MME's breakdown (and its categories), and accuracy as Video-MME's own rule reads replies."""
    answered = [item for item in bench.items if item.index in predictions and item.rotation == 0]
    hits = [videomme_choice(predictions[item.index], "".join(item.options)) == item.answer for item in answered]
    report["metrics"]["videomme_rule_accuracy"] = sum(hits) / len(hits) if hits else 0.0
    report["breakdown"] = breakdown(bench, readings)
    categories = {name: values for name, values in report["categories"].items() if name != "all"}
    report["categories"] = {**categories, **breakdown_categories(report["breakdown"])}
    report["nframe"] = nframe


def _write_csv(path: Path, report: dict) -> None:
    """Overall and per-category rows with every metric reported anywhere (blank where it does not
    apply). ``questions`` counts questions; circular runs add ``rotations``, the variants asked."""
    names: list[str] = list(report["metrics"])
    for values in report["categories"].values():
        names += [k for k in values if k not in names]
    counts = ["questions", "rotations"] if "rotations" in report else ["questions"]
    metric_names = [n for n in names if n not in ("questions", "rotations")]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["category", *counts, *metric_names])
        overall = [_fmt(report["metrics"].get(m)) for m in metric_names]
        writer.writerow(["overall", *(report[c] for c in counts), *overall])
        for name, values in report["categories"].items():
            writer.writerow([name, *(values.get(c, "") for c in counts), *(_fmt(values.get(m)) for m in metric_names)])


def _fmt(value) -> str:
    return "" if value is None else f"{value:.4f}"


def summary_table(reports: Sequence[dict]) -> str:
    lines = ["| benchmark | kind | questions | metric | score | unmatched | judged | errors | bad rows |",
             "|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for r in reports:
        main = r["main"]
        value = r["metrics"][main]
        shown = f"{value:.1f}" if main.startswith("mme") else f"{100 * value:.1f}%"
        others = ", ".join(f"{k} {100 * v:.1f}%" for k, v in r["metrics"].items()
                           if k != main and not k.startswith("mme"))
        metric = main + (f" ({others})" if others else "")
        questions = f"{r['questions']}" + (f" ({r['rotations']} rotations)" if "rotations" in r else "")
        lines.append(f"| {r['benchmark']} | {r['kind']} | {questions} | {metric} | {shown} | "
                     f"{r['unmatched']} | {r.get('judged', 0)} | {r.get('errors', 0)} | {r['bad_rows']} |")
        if "breakdown" in r:
            durations = ", ".join(f"{name} {100 * part['accuracy']:.1f}% ({part['questions']})"
                                  for name, part in r["breakdown"].items() if name != "overall")
            notes.append(f"{r['benchmark']}: video, {r['nframe']} frames each"
                         + (f"; by duration: {durations}" if durations else ""))
        if r.get("incomplete_pictures"):
            notes.append(f"{r['benchmark']}: {r['incomplete_pictures']} picture(s) with a single answered question "
                         "left out of acc_plus")
        notes += [f"WARNING: {w}" for w in r.get("warnings", [])]
    return "\n".join(lines) + "\n" + "".join(f"\n{note}\n" for note in notes)


def evaluate(
    runner,
    files: Sequence[str | Path],
    out_dir: str | Path,
    **options,
) -> list[dict]:
    """Evaluate on every file; writes per-benchmark results and ``summary.md``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    reports = [evaluate_file(runner, f, out_dir, **options) for f in files]
    (out_dir / "summary.md").write_text(summary_table(reports))
    return reports
