"""``ovis eval --model DIR --data FILE.tsv [--data ...]`` and ``ovis eval --synth``; video benchmarks
(a TSV with a ``video`` column) take ``--video-root`` and ``--nframe``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ovis.cli.arg_types import positive_int
from ovis.errors import InputFileError, UsageError


def add_commands(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "eval", help="score a model on benchmark files in VLMEvalKit's TSV layout",
        description="Score a model on VLMEvalKit-format TSV files (multiple choice, yes/no, short-answer VQA; "
        "video multiple choice such as Video-MME). "
        "Predictions are saved as they come, so a rerun resumes; results go to OUT/NAME/results.{json,csv} "
        "and OUT/summary.md.",
    )
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--data", action="append", default=[], help="benchmark TSV (repeatable)")
    p.add_argument("--synth", action="store_true",
                   help="also build and run three small synthetic benchmarks (MCQ, yes/no, VQA) in OUT/synth-data")
    p.add_argument("--out", default="runs/eval", help="output directory (default runs/eval)")
    p.add_argument("--kind", choices=["auto", "mcq", "yesno", "vqa"], default="auto",
                   help="task kind (default: from the benchmark's name and columns)")
    p.add_argument("--circular", action="store_true", help="MMBench's circular evaluation for multiple choice")
    p.add_argument("--relaxed", action="store_true", help="VQA: accept numbers within 5%% and contained answers")
    p.add_argument("--prompt-style", choices=["vlmevalkit", "plain"], default="vlmevalkit",
                   help="vlmevalkit: hint/options/instruction as VLMEvalKit builds them (default); plain: the bare "
                   "question, for models trained without those instructions (e.g. the quick-start's)")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--max-new-tokens", type=positive_int, help="default 32 (multiple choice, VQA) or 16 (yes/no)")
    p.add_argument("--max-partition", type=positive_int,
                   help="tiled models: tiles per image for every question (default: VLMEvalKit's Ovis2 rule: 9, "
                   "12 on TextVQA/ChartQA/DocVQA/InfoVQA/OCRBench, 12 // n for n images)")
    p.add_argument("--video-root", help="video benchmarks: the folder holding the videos (default: each TSV's "
                   "folder; Video-MME's ids are looked for as video/ID.mp4, then ID.mp4, there)")
    p.add_argument("--nframe", type=positive_int, default=None,
                   help="video benchmarks: frames sampled uniformly per video, one tile each (default 8, "
                   "VLMEvalKit's Video-MME_8frame)")
    p.add_argument("--limit", type=positive_int, help="only the first N questions of each file (a smoke run)")
    p.add_argument("--discard-stale", action="store_true",
                   help="delete saved predictions made by another model or setup (default: refuse to mix them)")
    p.add_argument("--judge-url", help="OpenAI-compatible API (e.g. http://localhost:8000/v1) whose model reads "
                   "replies the rules cannot (VLMEvalKit's GPT fallback); off by default. Key: $OVIS_JUDGE_API_KEY")
    p.add_argument("--judge-model", help="the judge endpoint's model name (with --judge-url)")
    p.add_argument("--device", help="cuda, cpu... (default: CUDA when present)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ovis.eval.judge import Judge
    from ovis.eval.run import check_files, evaluate, summary_table
    from ovis.eval.synth_bench import write_synth_benchmarks
    from ovis.eval.video_bench import DEFAULT_NFRAME
    from ovis.serve.runner import DTYPE_NAMES, OvisRunner, RunnerArguments, pick_device, pick_dtype

    if bool(args.judge_url) != bool(args.judge_model):
        raise UsageError("--judge-url and --judge-model go together: give both, or neither")
    judge = Judge(args.judge_url, args.judge_model) if args.judge_url else None
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UsageError(f"--out {args.out} is a file; give a directory (the results go into it)")
    files = [Path(f) for f in args.data]
    if args.synth:
        files += write_synth_benchmarks(Path(args.out) / "synth-data")
    if not files:
        raise UsageError("nothing to evaluate: give --data FILE.tsv (repeatable) and/or --synth")
    missing = [str(f) + (" (a directory)" if f.is_dir() else "") for f in files if not f.is_file()]
    if missing:
        raise InputFileError(f"benchmark file(s) not found: {', '.join(missing)}")
    kind = None if args.kind == "auto" else args.kind
    if args.video_root is not None and not Path(args.video_root).expanduser().is_dir():
        raise InputFileError(f"--video-root {args.video_root}: not a directory")
    videos = {"video_root": args.video_root, "nframe": args.nframe or DEFAULT_NFRAME}
    # Resolve the dtype now so that the fingerprint checked before loading is the one recorded after.
    dtype = pick_dtype(pick_device(args.device), args.dtype)
    dtype_name = next(name for name, value in DTYPE_NAMES.items() if value == dtype)
    runner_args = RunnerArguments(model_path=args.model, device=args.device, dtype=dtype_name,
                                  max_batch_size=args.batch_size)
    # Every file is read and checked before the model loads (minutes at real scale).
    for line in check_files(files, args.out, runner_args=runner_args, dtype=dtype_name, kind=kind,
                            max_new_tokens=args.max_new_tokens, prompt_style=args.prompt_style,
                            discard_stale=args.discard_stale, max_partition=args.max_partition, **videos):
        print(line, file=sys.stderr)
    runner = OvisRunner(runner_args)
    reports = evaluate(
        runner, files, args.out, kind=kind, circular=args.circular, relaxed=args.relaxed, batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens, limit=args.limit, prompt_style=args.prompt_style,
        discard_stale=args.discard_stale, judge=judge, max_partition=args.max_partition, **videos,
    )
    print(summary_table(reports))
    for report in reports:
        for warning in report["warnings"]:
            print(f"WARNING: {warning}", file=sys.stderr)
    print(f"details: {Path(args.out) / 'summary.md'} and {Path(args.out)}/<benchmark>/results.json")
    return 0
