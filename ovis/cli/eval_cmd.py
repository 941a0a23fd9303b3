"""``ovis eval --model DIR --data FILE.tsv [--data ...]`` and ``ovis eval --synth``."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_commands(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "eval", help="score a model on benchmark files in VLMEvalKit's TSV layout",
        description="Score a model on VLMEvalKit-format TSV files (multiple choice, yes/no, short-answer VQA). "
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
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, help="default 32 (multiple choice, VQA) or 16 (yes/no)")
    p.add_argument("--limit", type=int, help="only the first N questions of each file (a smoke run)")
    p.add_argument("--device", help="cuda, cpu... (default: CUDA when present)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ovis.eval.run import evaluate
    from ovis.eval.synth_bench import write_synth_benchmarks
    from ovis.serve.runner import OvisRunner, RunnerArguments

    files = [Path(f) for f in args.data]
    if args.synth:
        files += write_synth_benchmarks(Path(args.out) / "synth-data")
    if not files:
        raise ValueError("nothing to evaluate: give --data FILE.tsv (repeatable) and/or --synth")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"benchmark file(s) not found: {', '.join(missing)}")
    runner = OvisRunner(RunnerArguments(model_path=args.model, device=args.device, dtype=args.dtype,
                                        max_batch_size=args.batch_size))
    reports = evaluate(
        runner, files, args.out, kind=None if args.kind == "auto" else args.kind, circular=args.circular,
        relaxed=args.relaxed, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, limit=args.limit,
        prompt_style=args.prompt_style,
    )
    from ovis.eval.run import summary_table

    print(summary_table(reports))
    print(f"details: {Path(args.out) / 'summary.md'} and {Path(args.out)}/<benchmark>/results.json")
    return 0
