"""How long the light ``ovis`` commands take to start, against importing torch, measured side by side.

    python benchmarks/cli_startup.py [--runs 5]

Each command runs in a fresh interpreter ``--runs`` times, interleaved (machines are noisy); the
table gives the median wall time and its ratio to ``import torch`` alone. Then ``python -X
importtime`` lists the slowest imports of ``ovis --help`` (cumulative microseconds), so a heavy
import that creeps in shows by name.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "import torch": [sys.executable, "-c", "import torch"],
    "ovis --help": [sys.executable, "-m", "ovis", "--help"],
    "ovis list vit": [sys.executable, "-m", "ovis", "list", "vit"],
    "ovis plugins": [sys.executable, "-m", "ovis", "plugins"],
    "ovis compose --help": [sys.executable, "-m", "ovis", "compose", "--help"],
}


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - start


def slowest_imports(argv: list[str], top: int) -> list[tuple[int, str]]:
    err = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], check=True, capture_output=True, text=True).stderr
    rows = []
    for line in err.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
            if cumulative.isdigit():
                rows.append((int(cumulative), name))
    return sorted(rows, reverse=True)[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--top", type=int, default=8, help="slowest imports of `ovis --help` to list")
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for argv in COMMANDS.values():  # warm the file cache once
        timed(argv)
    for _ in range(args.runs):
        for name, argv in COMMANDS.items():
            times[name].append(timed(argv))
    torch_time = statistics.median(times["import torch"])
    print(f"| command | median s ({args.runs} runs) | vs import torch |")
    print("| --- | --- | --- |")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| `{name}` | {median:.2f} | {median / torch_time:.2f}x |")
    print("\nslowest imports of `ovis --help` (cumulative us):")
    for cumulative, name in slowest_imports(COMMANDS["ovis --help"], args.top):
        print(f"  {cumulative:>9}  {name}")


if __name__ == "__main__":
    main()
