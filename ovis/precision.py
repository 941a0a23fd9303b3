"""Which floating-point precision to compute in: ``auto`` picks what runs fast on this hardware.

bf16 halves memory and is the fast path on GPUs, but a CPU without native bf16 instructions
emulates it: on an AVX2-only CPU a bf16 matmul ran ~60x slower than float32 (0.8 vs 50 GFLOP/s),
which turned a 10-minute CPU training run into most of an hour. So ``auto`` means:

* CUDA: bf16 where the GPU supports it, else float32 (fp16 for inference, see ``ovis.serve``);
* CPU: bf16 only where the CPU has native bf16 (AVX-512 BF16 or AMX on x86, the BF16 extension on
  Arm) *and* a short matmul probe finds bf16 clearly faster than float32 here; float32 otherwise
  (AVX-512 BF16 without AMX was measured slower than float32 at the quick-start's sizes).

The choice and its reason are logged once per process. An explicit ``bf16`` on a CPU without native
bf16 is honoured, with a warning that gives the slowdown a probe measures.
"""

from __future__ import annotations

import functools
import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from ovis.errors import ConfigError

logger = logging.getLogger("ovis.precision")

Precision = Literal["bf16", "fp32"]
Requested = Literal["auto", "bf16", "fp32"]
PRECISIONS: tuple[str, ...] = ("auto", "bf16", "fp32")
DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp32": torch.float32}
#: the probe's product: big enough to reach a kernel's steady rate, ~3 ms in float32 on 2 cores
PROBE_SHAPE = (256, 512, 1024)
#: without native bf16 only a small product is timed: emulated bf16 is slow enough to measure quickly
SMALL_PROBE_SHAPE = (64, 256, 512)
#: ``auto`` takes bf16 on a CPU only when the probe finds it this much faster than float32: a close
#: call would flip between runs on probe noise, and bf16 also costs accuracy
BF16_MARGIN = 1.2


@dataclass(frozen=True)
class PrecisionChoice:
    """The resolved precision, with why, for one device."""

    precision: Precision
    reason: str
    device: str

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.precision]

    def __str__(self) -> str:
        return f"precision: {self.precision} ({self.reason})"


# -- what the hardware has --------------------------------------------------------------------------
def _cpuinfo(*keys: str) -> str | None:
    """The first ``/proc/cpuinfo`` value under one of ``keys`` (lower case); None where there is none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in keys:
            return value.strip()
    return None


def _cpu_flags() -> set[str]:
    return set((_cpuinfo("flags", "features") or "").split())


def cpu_model() -> str:
    """The CPU's model name, for reports of what a figure was measured on. Virtual machines often
    mask the name ("AMD EPYC"), so the family and model numbers follow where the CPU gives them."""
    name = _cpuinfo("model name") or platform.processor() or platform.machine()
    family, model = _cpuinfo("cpu family"), _cpuinfo("model")
    return f"{name} (family {family}, model {model})" if family and model else name


def cpu_features() -> list[str]:
    """The CPU's vector and matrix extensions that decide its speed here (AVX2, AVX-512, AMX...)."""
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "asimd", "sve", "bf16")
    flags = _cpu_flags()
    return [flag for flag in wanted if flag in flags]


@functools.cache
def cpu_native_bf16() -> str | None:
    """The CPU's native bf16 instructions by name (``"AMX"``, ``"AVX-512 BF16"``, ``"Arm BF16"``),
    or None when bf16 would be emulated."""
    checks = (
        ("AMX", "_is_amx_tile_supported", "amx_bf16"),
        ("AVX-512 BF16", "_is_avx512_bf16_supported", "avx512_bf16"),
    )
    flags = _cpu_flags()
    for name, torch_check, flag in checks:
        check = getattr(torch.cpu, torch_check, None)
        try:
            if check is not None and check():
                return name
        except RuntimeError:  # pragma: no cover - a torch built without the check
            pass
        if flag in flags:
            return name
    if platform.machine().lower() in ("aarch64", "arm64") and "bf16" in flags:
        return "Arm BF16"
    return None


def _rate(dtype: torch.dtype, shape: tuple[int, int, int], repeats: int, min_seconds: float = 0.03) -> float:
    """GFLOP/s of one ``[m, k] @ [k, n]`` product on the CPU: the best of at least ``repeats`` runs
    and ``min_seconds`` of them, after a warm-up of as long (a cold thread pool or kernel cache
    read 5x slow: a 5-run probe once took float32 for the slower one)."""
    m, k, n = shape
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=generator).to(dtype)
    b = torch.randn(k, n, generator=generator).to(dtype)
    best = float("inf")
    for timed in (False, True):
        began, runs = time.perf_counter(), 0
        while runs < repeats or time.perf_counter() - began < min_seconds:
            start = time.perf_counter()
            torch.matmul(a, b)
            if timed:
                best = min(best, time.perf_counter() - start)
            runs += 1
    return 2 * m * k * n / max(best, 1e-9) / 1e9


@functools.cache
def cpu_matmul_rates(shape: tuple[int, int, int] = PROBE_SHAPE, repeats: int = 5, rounds: int = 2) -> dict[str, float]:
    """Measured float32 and bf16 matmul rates (GFLOP/s) on this CPU; cached for the process.

    The two are timed in alternation, best of ``rounds`` each, so that a burst of load from another
    process (a second rank starting up) slows both rather than deciding the comparison."""
    rates = {"fp32": 0.0, "bf16": 0.0}
    for _ in range(rounds):
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            rates[name] = max(rates[name], _rate(dtype, shape, repeats))
    return rates


# -- the decision ---------------------------------------------------------------------------------
def _device_type(device: str | torch.device | None) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device).type


def _cuda(requested: str) -> PrecisionChoice:
    if torch.cuda.is_bf16_supported():
        if requested == "fp32":
            return PrecisionChoice("fp32", "requested, on the GPU", "cuda")
        reason = "requested, on the GPU" if requested == "bf16" else "this GPU supports bf16"
        return PrecisionChoice("bf16", reason, "cuda")
    if requested == "bf16":
        raise ConfigError("precision bf16 was requested but this GPU does not support bf16; use auto or fp32")
    return PrecisionChoice("fp32", "requested, on the GPU" if requested == "fp32" else "this GPU has no bf16", "cuda")


def _cpu(requested: str) -> PrecisionChoice:
    native = cpu_native_bf16()
    if requested == "fp32":
        return PrecisionChoice("fp32", "requested, on the CPU", "cpu")
    if requested == "bf16":
        if native is None:
            rates = cpu_matmul_rates(SMALL_PROBE_SHAPE, 2)
            slowdown = rates["fp32"] / max(rates["bf16"], 1e-9)
            _warn_once(
                f"precision bf16 on a CPU without native bf16: bf16 is emulated here and a matmul probe ran "
                f"{slowdown:.0f}x slower than float32 ({rates['bf16']:.1f} vs {rates['fp32']:.1f} GFLOP/s); "
                "expect the run to be that much slower. precision: auto (or fp32) avoids it"
            )
        return PrecisionChoice("bf16", "requested, on the CPU", "cpu")
    if native is None:
        return PrecisionChoice("fp32", "this CPU has no native bf16", "cpu")
    rates = cpu_matmul_rates()
    if rates["bf16"] < BF16_MARGIN * rates["fp32"]:
        # Before deciding against the native type, measure longer: a cold bf16 kernel or a burst of
        # load from another process once made two stages of one recipe, seconds apart, pick apart.
        rates = cpu_matmul_rates(rounds=6)
    measured = f"bf16 matmul {rates['bf16']:.0f} vs float32 {rates['fp32']:.0f} GFLOP/s"
    if rates["bf16"] >= BF16_MARGIN * rates["fp32"]:
        return PrecisionChoice("bf16", f"this CPU has {native}; {measured}", "cpu")
    return PrecisionChoice("fp32", f"this CPU has {native}, but bf16 is not faster here: {measured}", "cpu")


def resolve_precision(requested: str = "auto", device: str | torch.device | None = None) -> PrecisionChoice:
    """``auto`` / ``bf16`` / ``fp32`` -> what to compute in on ``device`` (default: CUDA if present,
    else the CPU). Logs the choice once per process."""
    if requested not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {requested!r}")
    kind = _device_type(device)
    if kind == "cuda":
        choice = _cuda(requested)
    elif kind == "cpu":
        choice = _cpu(requested)
    else:  # mps, xpu...: no check here; float32 unless bf16 is asked for
        precision: Precision = "bf16" if requested == "bf16" else "fp32"
        reason = f"requested, on {kind}" if requested != "auto" else f"no bf16 check for {kind}"
        choice = PrecisionChoice(precision, reason, kind)
    _info_once(str(choice))
    return choice


_said: set[str] = set()


def _info_once(message: str) -> None:
    if message not in _said:
        _said.add(message)
        logger.info(message)


def _warn_once(message: str) -> None:
    if message not in _said:
        _said.add(message)
        logger.warning(message)


def machine() -> dict:
    """What the figures were measured on."""
    import os

    # The thread count is part of the result: float32 sums split over other threads round otherwise,
    # and a run of this size grows that into another outcome (benchmarks/README.md, "Smaller steps").
    return {
        "cpu": cpu_model(),
        "cpu_features": cpu_features(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": cpu_native_bf16(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
