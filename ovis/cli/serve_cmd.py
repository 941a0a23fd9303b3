"""``ovis run`` (one question, streamed), ``ovis chat`` (interactive) and ``ovis serve`` (UI + API)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from ovis.cli.arg_types import positive_int
from ovis.errors import UsageError

if TYPE_CHECKING:
    from ovis.serve.options import ServeOptions

CHAT_HELP = """commands:
  /image PATH [PATH...]  attach image(s) to your next message
  /reset                 forget the conversation
  /quit                  leave (or Ctrl-D)"""


def _generation_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation")
    g.add_argument("--max-new-tokens", type=int, default=512)
    g.add_argument("--sample", dest="do_sample", action="store_true", help="sample instead of greedy decoding")
    g.add_argument("--temperature", type=float, help="sampling temperature (with --sample)")
    g.add_argument("--top-p", type=float, help="nucleus sampling (with --sample)")
    g.add_argument("--top-k", type=int, help="top-k sampling (with --sample)")
    g.add_argument("--num-beams", type=int, default=1, help="beam search (no streaming)")
    g.add_argument("--repetition-penalty", type=float)
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("--seed", type=int, help="random seed for sampling")
    g.add_argument("--device", help="cuda, cuda:1, cpu... (default: CUDA when present, else CPU)")
    g.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="default (auto): bf16 on CUDA; on a CPU bf16 only where it is native and measured "
                   "faster, else float32")


def add_commands(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("run", help="answer one question about image(s), streamed",
                            description="Load a model and answer one question about zero or more images.")
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--image", action="append", default=[], help="image file (repeat for several)")
    p.add_argument("--video", action=_Once, help="a video file (PyAV: pip install 'ovis[video]'); <video> in the "
                   "question places it, else it goes before the question (one per question)")
    p.add_argument("--num-frames", type=positive_int, default=None,
                   help="frames sampled uniformly from --video (default 8)")
    p.add_argument("--max-partition", type=int,
                   help="tiled models: the most tiles per image (default: the model's own; video frames: 1)")
    p.add_argument("question", help="the question; without <image> markers the images go first")
    p.add_argument("--no-stream", dest="stream", action="store_false", help="print the answer when complete")
    p.add_argument("--json", action="store_true", help="print the result (prompt, output, token counts) as JSON")
    _generation_flags(p)
    p.set_defaults(handler=run_cmd)

    p = commands.add_parser("chat", help="interactive multi-turn chat with images",
                            description="Chat with a model in the terminal.\n\n" + CHAT_HELP,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--image", action="append", default=[], help="image(s) for the first message")
    p.add_argument("--system", help="system prompt (default: the chat format's own)")
    p.add_argument("--max-partition", type=int, help="tiled models: the most tiles per image (default: the model's)")
    _generation_flags(p)
    p.set_defaults(handler=chat_cmd)

    p = commands.add_parser("serve", help="web chat UI and OpenAI-compatible API for a model",
                            description="Serve a model: a Gradio chat at / and an OpenAI-compatible API at "
                            "/v1 (chat/completions, models). Binds 127.0.0.1 unless --host says otherwise; "
                            "before exposing it, give it a key (--api-key-file, --api-key or $OVIS_API_KEY).")
    add_server_arguments(p)
    p.set_defaults(handler=serve_cmd)


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``ovis serve`` (``--model_path`` too: ``python ovis/serve/server.py`` is this command)."""
    parser.add_argument("--model", "--model_path", "--model-path", dest="model_path", required=True,
                        help="model directory (from `ovis compose`, `ovis train` or `ovis quickstart`)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes it)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--model-name", help="the model id the API reports (default: the directory name)")
    parser.add_argument("--no-ui", action="store_true", help="serve the HTTP API only")
    parser.add_argument("--no-api", action="store_true", help="serve the web UI only")
    parser.add_argument("--device", help="cuda, cuda:1, cpu... (default: CUDA when present)")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto")
    parser.add_argument("--max-batch-size", type=int, default=16, help="requests generated together")
    parser.add_argument("--batch-window-ms", type=float, default=10.0,
                        help="how long the first request waits for others to join its batch")
    parser.add_argument("--max-images", type=int, help="images per request (default 8)")
    parser.add_argument("--max-partition", type=int,
                        help="the largest max_partition a request may ask for (tiled models; default 16)")
    parser.add_argument("--max-videos", type=int, help="videos per request (default 1; 0: none)")
    parser.add_argument("--max-video-bytes", type=int,
                        help="encoded bytes per video (default: max-images x max-image-bytes)")
    parser.add_argument("--max-video-frames", type=int, help="frames a request may take from a video (default 32)")
    parser.add_argument("--max-image-pixels", type=int, help="pixels per image (default 4096x4096)")
    parser.add_argument("--max-image-bytes", type=int, help="encoded bytes per image (default 10 MiB)")
    parser.add_argument("--max-new-tokens", type=int, help="ceiling for max_tokens (default 1024)")
    parser.add_argument("--max-body-bytes", type=int,
                        help="bytes of one request body (default: room for --max-images images and 8 MiB of text, "
                        "at most 32 MiB)")
    parser.add_argument("--flagging_dir", "--flagging-dir", dest="flagging_dir",
                        help="where the UI stores flagged conversations (default: flagging off)")
    g = parser.add_argument_group("exposing the server")
    key = g.add_mutually_exclusive_group()
    key.add_argument("--api-key", help="the key /v1 (Authorization: Bearer KEY) and the web UI (login password) "
                     "ask for; default $OVIS_API_KEY; visible to other users of this machine in the process list, "
                     "so prefer --api-key-file")
    key.add_argument("--api-key-file", help="a file holding the key (its first line)")
    g.add_argument("--request-timeout", type=float, dest="request_timeout_s",
                   help="seconds a whole request may take (default 600)")
    g.add_argument("--body-timeout", type=float, dest="body_timeout_s",
                   help="seconds to wait for the next piece of a request body (default 30)")
    g.add_argument("--max-concurrent-requests", type=int,
                   help="requests with a body handled at once (default 64)")
    g.add_argument("--max-queued-requests", type=int,
                   help="requests waiting for a slot; past it the answer is 503 + Retry-After (default 256)")
    g.add_argument("--access-log", default="-",
                   help="JSON lines, one per request, without message text: - (standard error, the default), "
                   "a file path, or off")
    g.add_argument("--access-log-client", action="store_true", help="put the client address in the access log")


def _runner(args: argparse.Namespace):
    # lazy: `ovis --help` must not load the model code
    from transformers.utils import logging as hf_logging

    from ovis.serve.runner import OvisRunner, RunnerArguments

    hf_logging.disable_progress_bar()  # the answer is the output here; no loading bars around it

    return OvisRunner(RunnerArguments(model_path=args.model, device=args.device, dtype=args.dtype,
                                      max_new_tokens=args.max_new_tokens))


def _gen(args: argparse.Namespace) -> dict:
    settings = {
        "max_new_tokens": args.max_new_tokens, "do_sample": args.do_sample, "temperature": args.temperature,
        "top_p": args.top_p, "top_k": args.top_k, "num_beams": args.num_beams,
        "repetition_penalty": args.repetition_penalty, "stop": args.stop, "seed": args.seed,
    }
    return {k: v for k, v in settings.items() if v is not None}


def _print_stream(pieces, write: Callable[[str], object] | None = None) -> str:
    write = write or sys.stdout.write
    out = []
    for piece in pieces:
        out.append(piece)
        write(piece)
        sys.stdout.flush()
    write("\n")
    return "".join(out)


class _Once(argparse.Action):
    """An option that may be given once: a second one would silently replace the first."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest, None) is not None:
            before = getattr(namespace, self.dest)
            parser.error(f"{option_string} is given twice ({before!r}, {values!r}); give it once")
        setattr(namespace, self.dest, values)


def run_cmd(args: argparse.Namespace) -> int:
    runner = _runner(args)
    gen = _gen(args)
    images = args.image or None
    if args.num_frames is not None and args.video is None:
        raise UsageError("--num-frames samples frames from --video: give --video too, or leave --num-frames out")
    media = {"max_partition": args.max_partition, "video": args.video, "num_frames": args.num_frames or 8}
    if args.json or not args.stream:
        result = runner.run(images, args.question, **media, **gen)
        print(json.dumps(result, indent=2, ensure_ascii=False) if args.json else result["output"])
    else:
        _print_stream(runner.stream(images, args.question, **media, **gen))
    return 0


def chat_cmd(args: argparse.Namespace, read: Callable[[str], str] | None = None) -> int:
    # lazy: `ovis --help` must not load the model code
    from ovis.interfaces import ImageError
    from ovis.serve.runner import ChatSession

    read = read or input
    runner = _runner(args)
    session = ChatSession(runner, system=args.system, max_partition=args.max_partition)
    gen = _gen(args)
    attached: list[str] = list(args.image)
    print(f"chatting with {args.model} on {runner.device} ({runner.model.dtype}); /help for commands")
    while True:
        try:
            line = read(f"you{f' [{len(attached)} image(s)]' if attached else ''}> ").strip()
        except EOFError:
            print()
            return 0
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return 0
        if line == "/help":
            print(CHAT_HELP)
            continue
        if line == "/reset":
            session.reset()
            attached = []
            print("(conversation cleared)")
            continue
        if line.startswith("/image"):
            paths = line.split()[1:]
            if not paths:
                print("usage: /image PATH [PATH...]")
                continue
            attached += paths
            continue
        if line.startswith("/"):
            print(f"unknown command {line.split()[0]!r}; /help lists them")
            continue
        try:
            sys.stdout.write("ovis> ")
            _print_stream(session.stream(line, attached, **gen))
        except (ImageError, ValueError) as exc:  # a bad image or prompt: say so, keep chatting
            print(f"\nerror: {exc}")
        attached = []


LIMIT_FLAGS = ("max_images", "max_image_pixels", "max_image_bytes", "max_new_tokens", "max_body_bytes",
               "max_partition", "max_videos", "max_video_bytes", "max_video_frames")
HTTP_FLAGS = ("request_timeout_s", "body_timeout_s", "max_concurrent_requests", "max_queued_requests")


def api_key(args: argparse.Namespace) -> str | None:
    """The key from --api-key, --api-key-file or $OVIS_API_KEY (in that order), or None."""
    if args.api_key is not None:
        return args.api_key
    if args.api_key_file is not None:
        from ovis.errors import InputFileError  # lazy: keeps the CLI's import light

        try:
            lines = open(args.api_key_file, encoding="utf-8").read().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputFileError(f"--api-key-file {args.api_key_file}: cannot read the key ({exc})") from exc
        if not lines or not lines[0].strip():
            raise InputFileError(f"--api-key-file {args.api_key_file}: the file is empty (the key goes on line 1)")
        return lines[0].strip()
    from ovis.serve.auth import KEY_ENV  # lazy: `ovis --help` must not load the serving stack

    return os.environ.get(KEY_ENV) or None


def serve_options(args: argparse.Namespace) -> ServeOptions:
    """The parsed flags of ``ovis serve`` as :class:`~ovis.serve.options.ServeOptions` (limits not
    given keep their defaults)."""
    from ovis.serve.options import ServeOptions  # lazy: `ovis --help` must not load the serving stack

    return ServeOptions(
        model_path=args.model_path, host=args.host, port=args.port, model_name=args.model_name,
        ui=not args.no_ui, api=not args.no_api, device=args.device, dtype=args.dtype,
        max_batch_size=args.max_batch_size, batch_window_ms=args.batch_window_ms,
        limits={name: getattr(args, name) for name in LIMIT_FLAGS if getattr(args, name) is not None},
        flagging_dir=args.flagging_dir,
        api_key=api_key(args),
        http={name: getattr(args, name) for name in HTTP_FLAGS if getattr(args, name) is not None},
        access_log=args.access_log,
        access_log_client=args.access_log_client,
    )


def serve_cmd(args: argparse.Namespace) -> int:
    from ovis.serve.server import serve  # lazy: `ovis --help` must not load the serving stack

    return serve(serve_options(args))
