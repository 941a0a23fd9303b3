"""``ovis eval``: run a model over benchmark files, resumably, and write scores and a summary table.

For each benchmark, ``OUT/NAME/predictions.jsonl`` gets one line per answered question as soon as
its batch finishes; a rerun reads it and only asks what is missing. Scores go to
``OUT/NAME/results.json`` and ``results.csv`` (overall and per category), and ``OUT/summary.md``
holds one markdown table of every benchmark run.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from ovis.eval.prompts import build_prompt
from ovis.eval.scoring import score
from ovis.eval.tsv import Benchmark, Kind, read_benchmark, with_circular

DEFAULT_MAX_NEW_TOKENS = {"mcq": 32, "yesno": 16, "vqa": 32}


def read_predictions(path: Path) -> tuple[dict[int, str], dict[int, str]]:
    """Predictions and per-item errors written so far; a line cut short by a crash is ignored."""
    predictions: dict[int, str] = {}
    errors: dict[int, str] = {}
    if not path.exists():
        return predictions, errors
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "error" in record:
            errors[int(record["index"])] = record["error"]
        else:
            predictions[int(record["index"])] = record["prediction"]
    return predictions, errors


def predict(
    runner,
    bench: Benchmark,
    out: Path,
    *,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    prompt_style: str = "vlmevalkit",
    progress: bool = True,
) -> tuple[dict[int, str], dict[int, str]]:
    """Answer every item not yet in ``out/predictions.jsonl``; returns (predictions, errors)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "predictions.jsonl"
    predictions, errors = read_predictions(path)
    todo = [item for item in bench.items if item.index not in predictions and item.index not in errors]
    params = runner.args.generation_params(max_new_tokens=max_new_tokens or DEFAULT_MAX_NEW_TOKENS[bench.kind])
    bar = tqdm(total=len(bench.items), initial=len(bench.items) - len(todo), desc=bench.name, unit="q",
               disable=not progress)
    with path.open("a", encoding="utf-8") as sink:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start: start + batch_size]
            requests, asked = [], []
            for item in chunk:
                text, images = build_prompt(item, bench.kind, prompt_style)
                try:
                    pictures = [Image.open(io.BytesIO(data)).convert("RGB") for data in images]
                    requests.append(runner.prepare([{"role": "user", "content": text}], pictures, params))
                    asked.append(item)
                except (ValueError, OSError) as exc:  # too long, undecodable...: recorded, not fatal
                    errors[item.index] = f"{type(exc).__name__}: {exc}"
                    sink.write(json.dumps({"index": item.index, "error": errors[item.index]}) + "\n")
            for item, completion in zip(asked, runner.generate(requests) if requests else [], strict=True):
                predictions[item.index] = completion.output
                sink.write(json.dumps({"index": item.index, "prediction": completion.output}, ensure_ascii=False)
                           + "\n")
            sink.flush()
            bar.update(len(chunk))
    bar.close()
    return predictions, errors


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
) -> dict:
    bench = read_benchmark(path, kind=kind)
    if limit is not None:
        bench.items = bench.items[:limit]
    if circular and bench.kind == "mcq":  # only multiple choice has options to rotate
        bench = with_circular(bench)
    out = Path(out_dir) / (bench.name if prompt_style == "vlmevalkit" else f"{bench.name}-{prompt_style}")
    predictions, errors = predict(runner, bench, out, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                  prompt_style=prompt_style, progress=progress)
    report = score(bench, predictions, relaxed=relaxed)
    report["errors"] = len([i for i in errors if i not in predictions])
    report["prompt_style"] = prompt_style
    report["bad_row_reasons"] = bench.bad_rows[:20]
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    _write_csv(out / "results.csv", report)
    return report


def _write_csv(path: Path, report: dict) -> None:
    metric_names = sorted({k for c in report["categories"].values() for k in c if k != "questions"})
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["category", "questions", *metric_names])
        answered = report["answered"]
        writer.writerow(["overall", answered, *(_fmt(report["metrics"].get(m)) for m in metric_names)])
        for name, values in report["categories"].items():
            writer.writerow([name, values["questions"], *(_fmt(values.get(m)) for m in metric_names)])


def _fmt(value) -> str:
    return "" if value is None else f"{value:.4f}"


def summary_table(reports: Sequence[dict]) -> str:
    lines = ["| benchmark | kind | questions | metric | score | unmatched | errors | bad rows |",
             "|---|---|---|---|---|---|---|---|"]
    for r in reports:
        main = r["main"]
        value = r["metrics"][main]
        shown = f"{value:.1f}" if main.startswith("mme") else f"{100 * value:.1f}%"
        others = ", ".join(f"{k} {100 * v:.1f}%" for k, v in r["metrics"].items()
                           if k != main and not k.startswith("mme"))
        metric = main + (f" ({others})" if others else "")
        lines.append(f"| {r['benchmark']} | {r['kind']} | {r['answered']} | {metric} | {shown} | "
                     f"{r['unmatched']} | {r['errors']} | {r['bad_rows']} |")
    return "\n".join(lines) + "\n"


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
