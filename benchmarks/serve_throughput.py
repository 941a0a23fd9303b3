"""Throughput of ``ovis serve``'s OpenAI-compatible API under 1, 4 and 16 concurrent clients.

The server runs in this process (uvicorn in a thread, as ``ovis serve`` runs it); each client is a
thread with its own ``openai`` client. Every row sends the same requests (one 64x64 image and a
question each, greedy, ``max_tokens`` = K) and reports requests/s, generated tokens/s, latency and
the mean batch size the batcher formed, plus the ratio to the 1-client row measured in the same
run. A last row repeats 16 clients with batching off (``max_batch_size=1``)::

    python benchmarks/serve_throughput.py                       # the chatty toy model, built in a temp dir
    python benchmarks/serve_throughput.py --model runs/quickstart/stage3/final --requests 64

Clients and server share the CPU (and the GIL) here, so absolute numbers are a floor; compare rows.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_chatty_model(directory: Path) -> Path:
    """The test suite's ``chatty_model_dir``: clip-toy + qwen-toy with the LLM's matrices redrawn at a
    larger scale so replies vary with the prompt and the image."""
    import torch

    from ovis.composer import compose, save

    torch.manual_seed(0)
    model, processor = compose(vit="clip-toy", llm="qwen-toy", visual_vocab_size=256)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.llm.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.15, generator=generator)
    return Path(save(model, processor, directory / "chatty"))


def picture_url(seed: int) -> str:
    from PIL import Image

    image = Image.new("RGB", (64, 64), ((seed * 70) % 256, (seed * 130 + 40) % 256, (seed * 200 + 90) % 256))
    x = 8 + (seed * 13) % 32
    image.paste(((seed * 90 + 120) % 256, 20, 200), (x, x // 2, x + 20, x // 2 + 20))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def messages(i: int) -> list[dict]:
    return [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": picture_url(i)}},
        {"type": "text", "text": f"Question {i}: what colour is the square, and where is it?"},
    ]}]


@dataclass
class Row:
    clients: int
    max_batch: int
    requests: int
    wall_s: float
    latencies: list[float]
    tokens: int
    mean_batch: float

    @property
    def rps(self) -> float:
        return self.requests / self.wall_s

    @property
    def tps(self) -> float:
        return self.tokens / self.wall_s


def measure(runner, *, clients: int, max_batch: int, requests: int, max_new_tokens: int, window_ms: float) -> Row:
    from openai import OpenAI

    from ovis.serve.limits import ServeLimits
    from ovis.serve.server import ServerThread, build_app
    from ovis.serve.service import Service

    service = Service.wrap(
        runner, limits=ServeLimits(max_new_tokens=max(max_new_tokens, 1024)), model_name="bench",
        max_batch_size=max_batch, window_s=window_ms / 1000,
    )
    try:
        with ServerThread(build_app(service, ui=False)) as server:
            client = OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=600)
            payloads = [messages(i) for i in range(requests)]
            for warm in payloads[:2]:  # first-call overheads stay out of the numbers
                client.chat.completions.create(model="bench", messages=warm, max_tokens=max_new_tokens)
            before = service.batcher.stats.as_dict()
            latencies: list[float] = []
            tokens = [0]
            next_index = [0]
            lock = threading.Lock()
            errors: list[BaseException] = []

            def work() -> None:
                own = OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=600)
                while True:
                    with lock:
                        if next_index[0] >= requests:
                            return
                        i = next_index[0]
                        next_index[0] += 1
                    started = time.perf_counter()
                    try:
                        reply = own.chat.completions.create(model="bench", messages=payloads[i],
                                                            max_tokens=max_new_tokens)
                    except BaseException as exc:  # reported after the row
                        errors.append(exc)
                        return
                    with lock:
                        latencies.append(time.perf_counter() - started)
                        tokens[0] += reply.usage.completion_tokens

            threads = [threading.Thread(target=work) for _ in range(clients)]
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - started
            if errors:
                raise errors[0]
            after = service.batcher.stats.as_dict()
    finally:
        service.close()
    batches = after["batches"] - before["batches"]
    mean_batch = (after["requests"] - before["requests"]) / batches if batches else 0.0
    return Row(clients, max_batch, requests, wall, latencies, tokens[0], mean_batch)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def table(rows: list[Row]) -> str:
    base = rows[0]
    lines = [
        "| clients | max batch | requests | req/s | gen tok/s | mean lat (s) | p50 (s) | p95 (s) | mean batch "
        "| req/s vs 1 client |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r.clients} | {r.max_batch} | {r.requests} | {r.rps:.2f} | {r.tps:.1f} | "
            f"{statistics.mean(r.latencies):.2f} | {percentile(r.latencies, 0.5):.2f} | "
            f"{percentile(r.latencies, 0.95):.2f} | {r.mean_batch:.1f} | {r.rps / base.rps:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a model directory (default: build the chatty toy model in a temp dir)")
    parser.add_argument("--requests", type=int, default=32, help="requests per row (default 32)")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="max_tokens of every request (default 16)")
    parser.add_argument("--clients", default="1,4,16", help="concurrency levels (default 1,4,16)")
    parser.add_argument("--max-batch-size", type=int, default=16, help="the batcher's limit (default 16)")
    parser.add_argument("--batch-window-ms", type=float, default=10.0, help="the batcher's window (default 10)")
    parser.add_argument("--device", help="cuda, cpu... (default: CUDA when present)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from ovis.serve.runner import OvisRunner, RunnerArguments

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else build_chatty_model(Path(tmp))
        runner = OvisRunner(RunnerArguments(model_path=str(model), max_new_tokens=args.max_new_tokens,
                                            device=args.device))
        levels = [int(c) for c in args.clients.split(",")]
        configs = [(c, args.max_batch_size) for c in levels] + [(max(levels), 1)]
        rows = []
        for clients, max_batch in configs:
            row = measure(runner, clients=clients, max_batch=max_batch, requests=args.requests,
                          max_new_tokens=args.max_new_tokens, window_ms=args.batch_window_ms)
            print(f"clients={clients} max_batch={max_batch}: {row.rps:.2f} req/s, {row.tps:.1f} tok/s, "
                  f"mean batch {row.mean_batch:.1f}", file=sys.stderr, flush=True)
            rows.append(row)
    print(f"model: {args.model or 'chatty toy (clip-toy + qwen-toy)'} on {runner.device}, "
          f"torch threads {torch.get_num_threads()}, {args.requests} requests per row, max_tokens "
          f"{args.max_new_tokens}, greedy, batch window {args.batch_window_ms:g} ms\n")
    print(table(rows))
    batched = next((r for r in rows if r.clients == max(levels) and r.max_batch > 1), None)
    if batched is not None and rows[-1].max_batch == 1:
        print(f"\n{max(levels)} clients, batching on vs off: {batched.rps / rows[-1].rps:.2f}x requests/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
