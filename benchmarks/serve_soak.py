"""Soak test of ``ovis serve``: many clients for minutes, mixed requests; no 5xx, no memory growth.

The server is a real ``ovis serve`` process (API only, with an API key and the JSON access log to a
file), on the chatty toy model of ``serve_throughput.py`` unless ``--model`` names another. N client
coroutines (default 64) send requests back to back for ``--duration`` seconds (default 300), each
picking one of:

* ``text``: a text-only question, whole reply;
* ``image``: a 64x64 picture and a question, whole reply;
* ``stream``: an image question streamed to the end;
* ``cancel``: a streamed request abandoned after its first piece (the server must cancel its row).

It prints requests/s, p50/p99 latency per kind and overall, answers by status (and client-side
errors by type), and the server's resident memory (RSS, with its child processes) sampled every few
seconds. Memory is compared from the end of a warm-up (``--warmup``, default 10% of the duration)
to the end. The verdicts: zero 5xx, and RSS flat within 10% (the largest sample after warm-up at
most 10% above the warm-up sample)::

    python benchmarks/serve_soak.py                                  # 64 clients, 5 minutes
    python benchmarks/serve_soak.py --clients 16 --duration 30       # a quick check
    python benchmarks/serve_soak.py --json soak.json                 # keep the figures

Clients and server share the machine: absolute rates are a floor. Exit status 1 when a verdict fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serve_throughput import build_chatty_model, percentile, picture_url

from ovis.ports import free_port

KINDS = ("text", "image", "stream", "cancel")
MODEL_ID = "soak"


def payload(kind: str, i: int, max_tokens: int) -> dict:
    question = f"Question {i}: what colour is the square, and where is it?"
    if kind == "text":
        content: str | list = f"Tell me something about the number {i}."
    else:
        content = [{"type": "image_url", "image_url": {"url": picture_url(i % 50)}}, {"type": "text", "text": question}]
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}
    if kind in ("stream", "cancel"):
        body["stream"] = True
    return body


async def one_request(http, kind: str, i: int, max_tokens: int) -> tuple[int | str, float]:
    """(status or client error type, seconds) of one request of ``kind``."""
    import httpx

    body = payload(kind, i, max_tokens)
    started = time.perf_counter()
    try:
        if kind in ("text", "image"):
            response = await http.post("/v1/chat/completions", json=body)
            return response.status_code, time.perf_counter() - started
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                return response.status_code, time.perf_counter() - started
            async for line in response.aiter_lines():
                if kind == "cancel" and line.startswith("data: "):
                    break  # leave after the first piece: closing the stream drops the connection
            return response.status_code, time.perf_counter() - started
    except httpx.HTTPError as exc:
        return type(exc).__name__, time.perf_counter() - started


async def client_loop(url: str, key: str, seed: int, stop_at: float, max_tokens: int, results: list) -> None:
    import httpx

    rng = random.Random(seed)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600) as http:
        i = seed * 100_000
        while time.monotonic() < stop_at:
            kind = rng.choice(KINDS)
            outcome, seconds = await one_request(http, kind, i, max_tokens)
            results.append((time.monotonic(), kind, outcome, seconds))
            i += 1


def rss_bytes(pid: int) -> int:
    import psutil

    process = psutil.Process(pid)
    total = process.memory_info().rss
    for child in process.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass
    return total


async def sample_rss(pid: int, every: float, stop_at: float, samples: list) -> None:
    start = time.monotonic()
    while time.monotonic() < stop_at:
        samples.append((time.monotonic() - start, rss_bytes(pid)))
        await asyncio.sleep(every)
    samples.append((time.monotonic() - start, rss_bytes(pid)))


def start_server(model: Path, port: int, key_file: Path, log_file: Path, args) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "ovis",
        "serve",
        "--model",
        str(model),
        "--model-name",
        MODEL_ID,
        "--no-ui",
        "--port",
        str(port),
        "--api-key-file",
        str(key_file),
        "--access-log",
        str(log_file),
        "--max-new-tokens",
        str(max(args.max_tokens, 16)),
        "--max-batch-size",
        str(args.max_batch_size),
    ]
    if args.device:
        command += ["--device", args.device]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_ready(server: subprocess.Popen, url: str, timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited ({server.returncode}):\n{server.stdout.read()}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("the server did not start in time")


def report(results: list, samples: list, args, started: float, warm_at: float) -> dict:
    measured = [r for r in results if r[0] >= warm_at]
    wall = (max(r[0] for r in measured) - warm_at) if measured else 0.0
    outcomes = Counter(str(outcome) for _, _, outcome, _ in results)
    by_kind = defaultdict(list)
    for _, kind, outcome, seconds in measured:
        if outcome == 200:
            by_kind[kind].append(seconds)
    all_ok = [s for values in by_kind.values() for s in values]
    server_errors = sum(n for status, n in outcomes.items() if status.isdigit() and int(status) >= 500)
    warm_offset = warm_at - started
    baseline = next((rss for t, rss in samples if t >= warm_offset), samples[-1][1])
    after = [rss for t, rss in samples if t >= warm_offset] or [samples[-1][1]]
    growth = max(after) / baseline - 1
    summary = {
        "clients": args.clients,
        "duration_s": args.duration,
        "warmup_s": round(warm_offset, 1),
        "requests": len(results),
        "requests_after_warmup": len(measured),
        "req_per_s": round(len(measured) / wall, 2) if wall else 0.0,
        "latency_s": {
            kind: {"n": len(v), "p50": round(percentile(v, 0.5), 3), "p99": round(percentile(v, 0.99), 3)}
            for kind, v in sorted(by_kind.items())
            if v
        },
        "outcomes": dict(sorted(outcomes.items())),
        "server_5xx": server_errors,
        "rss_mib": [(round(t, 1), round(rss / 2**20, 1)) for t, rss in samples],
        "rss_growth_after_warmup": round(growth, 4),
    }
    if all_ok:
        summary["latency_s"]["all"] = {
            "n": len(all_ok),
            "p50": round(percentile(all_ok, 0.5), 3),
            "p99": round(percentile(all_ok, 0.99), 3),
        }
    summary["zero_5xx"] = server_errors == 0
    summary["rss_flat_within_10pct"] = growth <= 0.10
    return summary


def print_summary(s: dict) -> None:
    print(
        f"\n{s['clients']} clients, {s['duration_s']:g} s ({s['warmup_s']:g} s warm-up), "
        f"{s['requests']} requests ({s['requests_after_warmup']} after warm-up): {s['req_per_s']} req/s"
    )
    print("| kind | ok requests | p50 (s) | p99 (s) |\n| --- | --- | --- | --- |")
    for kind, v in s["latency_s"].items():
        print(f"| {kind} | {v['n']} | {v['p50']} | {v['p99']} |")
    print("answers: " + ", ".join(f"{k}: {n}" for k, n in s["outcomes"].items()))
    rss = s["rss_mib"]
    shown = rss if len(rss) <= 12 else [rss[round(i * (len(rss) - 1) / 11)] for i in range(12)]
    print("server RSS (s: MiB): " + ", ".join(f"{t:g}: {m:g}" for t, m in shown))
    print(f"RSS growth after warm-up: {100 * s['rss_growth_after_warmup']:+.1f}%")
    print(f"zero 5xx: {'PASS' if s['zero_5xx'] else 'FAIL'} ({s['server_5xx']})")
    print(f"RSS flat within 10%: {'PASS' if s['rss_flat_within_10pct'] else 'FAIL'}")


async def soak(url: str, key: str, pid: int, args) -> dict:
    results: list = []
    samples: list = []
    started = time.monotonic()
    stop_at = started + args.duration
    warm_at = started + (args.warmup if args.warmup is not None else 0.1 * args.duration)
    tasks = [client_loop(url, key, seed, stop_at, args.max_tokens, results) for seed in range(args.clients)]
    await asyncio.gather(sample_rss(pid, args.sample_every, stop_at, samples), *tasks)
    samples.append((time.monotonic() - started, rss_bytes(pid)))  # after the last requests finished
    return report(results, samples, args, started, warm_at)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a model directory (default: build the chatty toy model in a temp dir)")
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients (default 64)")
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of load (default 300)")
    parser.add_argument("--warmup", type=float, help="seconds before memory and rates count (default 10%%)")
    parser.add_argument("--max-tokens", type=int, default=16, help="max_tokens of each request (default 16)")
    parser.add_argument("--max-batch-size", type=int, default=16, help="the server's batch limit (default 16)")
    parser.add_argument("--sample-every", type=float, default=2.0, help="seconds between RSS samples (default 2)")
    parser.add_argument("--device", help="the server's device (default: CUDA when present)")
    parser.add_argument("--threads", type=int, help="the server's CPU threads (OMP_NUM_THREADS)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        model = Path(args.model) if args.model else build_chatty_model(tmp_path)
        key = secrets.token_urlsafe(24)
        key_file = tmp_path / "key"
        key_file.write_text(key + "\n")
        log_file = tmp_path / "access.jsonl"
        port = free_port("127.0.0.1")
        url = f"http://127.0.0.1:{port}"
        server = start_server(model, port, key_file, log_file, args)
        try:
            wait_ready(server, url)
            summary = asyncio.run(soak(url, key, server.pid, args))
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
        lines = log_file.read_text().splitlines() if log_file.exists() else []
        summary["access_log_lines"] = len(lines)
        summary["access_log_statuses"] = dict(Counter(str(json.loads(line)["status"]) for line in lines))
    summary["model"] = args.model or "chatty toy (clip-toy + qwen-toy)"
    print_summary(summary)
    print(f"access log: {summary['access_log_lines']} lines, statuses {summary['access_log_statuses']}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if summary["zero_5xx"] and summary["rss_flat_within_10pct"] else 1


if __name__ == "__main__":
    sys.exit(main())
