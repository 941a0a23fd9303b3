"""``precision: auto``: bf16 only where the hardware runs it natively and faster, float32 otherwise."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from ovis import precision
from ovis.precision import resolve_precision

QUICKSTART_CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "quickstart").glob("*.yaml"))


@pytest.fixture(autouse=True)
def fresh_log():
    precision._said.clear()
    yield
    precision._said.clear()


def fake_cpu(
    monkeypatch, native: str | None, fp32: float = 50.0, bf16: float = 0.8, later: dict | None = None
) -> list[tuple]:
    """Replace the capability check and the matmul probe (``later``: what a longer probe, more rounds,
    measures); returns the probe calls made."""
    calls: list[tuple] = []

    def rates(shape=precision.PROBE_SHAPE, repeats=5, rounds=2):
        calls.append(shape)
        longer = later if later is not None and rounds > 2 else None
        return {"fp32": fp32, "bf16": bf16} if longer is None else longer

    monkeypatch.setattr(precision, "cpu_native_bf16", lambda: native)
    # Each decision is logged once per process: forget what earlier tests logged.
    monkeypatch.setattr(precision, "_said", set())
    monkeypatch.setattr(precision, "cpu_matmul_rates", rates)
    return calls


def test_cpu_without_native_bf16_gets_fp32_and_no_probe(monkeypatch, caplog):
    calls = fake_cpu(monkeypatch, None)
    with caplog.at_level(logging.INFO, logger="ovis.precision"):
        first = resolve_precision("auto", "cpu")
        second = resolve_precision("auto", "cpu")
    assert first == second
    assert (first.precision, first.dtype) == ("fp32", torch.float32)
    assert str(first) == "precision: fp32 (this CPU has no native bf16)"
    assert calls == []  # an emulated-bf16 probe would itself be slow: not run for auto
    assert [r.getMessage() for r in caplog.records] == [str(first)]  # logged once


def test_a_probe_against_the_native_type_is_measured_again_longer_before_deciding(monkeypatch):
    calls = fake_cpu(monkeypatch, "AMX", fp32=243.0, bf16=34.0, later={"fp32": 298.0, "bf16": 1714.0})
    choice = resolve_precision("auto", "cpu")
    assert choice.precision == "bf16" and "1714" in choice.reason and len(calls) == 2
    calls = fake_cpu(monkeypatch, "AMX", fp32=100.0, bf16=400.0)
    assert resolve_precision("auto", "cpu").precision == "bf16" and len(calls) == 1  # a clear win: one probe


@pytest.mark.parametrize("native", ["AMX", "AVX-512 BF16"])
def test_cpu_with_native_bf16_takes_it_only_when_the_probe_finds_it_faster(monkeypatch, native):
    fake_cpu(monkeypatch, native, fp32=100.0, bf16=400.0)
    fast = resolve_precision("auto", "cpu")
    assert fast.precision == "bf16" and native in fast.reason and "400" in fast.reason

    fake_cpu(monkeypatch, native, fp32=100.0, bf16=110.0)  # within the margin: probe noise, not a win
    close = resolve_precision("auto", "cpu")
    assert close.precision == "fp32" and "not faster" in close.reason

    fake_cpu(monkeypatch, native, fp32=211.0, bf16=114.0)  # AVX-512 BF16 without AMX, as measured here
    assert resolve_precision("auto", "cpu").precision == "fp32"


def test_explicit_bf16_on_an_emulating_cpu_runs_with_a_warning_naming_the_slowdown(monkeypatch, caplog):
    calls = fake_cpu(monkeypatch, None, fp32=50.0, bf16=0.8)
    with caplog.at_level(logging.WARNING, logger="ovis.precision"):
        choice = resolve_precision("bf16", "cpu")
        resolve_precision("bf16", "cpu")
    assert choice.precision == "bf16"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "62x slower than float32" in warnings[0] and "0.8 vs 50.0" in warnings[0]
    assert set(calls) == {precision.SMALL_PROBE_SHAPE}  # the small probe only (cached in real use)


def test_explicit_fp32_is_kept_everywhere(monkeypatch):
    fake_cpu(monkeypatch, "AMX", fp32=10.0, bf16=1000.0)
    assert resolve_precision("fp32", "cpu").precision == "fp32"


@pytest.mark.parametrize(("supported", "requested", "expected"), [
    (True, "auto", "bf16"), (False, "auto", "fp32"), (True, "fp32", "fp32"), (True, "bf16", "bf16"),
])
def test_cuda_uses_bf16_where_the_gpu_has_it(monkeypatch, supported, requested, expected):
    calls = fake_cpu(monkeypatch, None)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    choice = resolve_precision(requested, "cuda")
    assert (choice.precision, choice.device) == (expected, "cuda")
    assert calls == []


def test_bf16_on_a_gpu_without_it_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(ValueError, match="does not support bf16"):
        resolve_precision("bf16", "cuda")


def test_unknown_precision_is_named():
    with pytest.raises(ValueError, match=r"auto, bf16, fp32; got 'fp16'"):
        resolve_precision("fp16", "cpu")


def test_the_probe_measures_this_cpu():
    rates = precision.cpu_matmul_rates(precision.SMALL_PROBE_SHAPE, 1)
    assert set(rates) == {"fp32", "bf16"} and all(rate > 0 for rate in rates.values())


@pytest.mark.parametrize("path", QUICKSTART_CONFIGS, ids=lambda p: p.name)
def test_quickstart_configs_resolve_to_what_this_machine_runs_fast(path):
    from ovis.train.loading import load_train_config

    config = load_train_config(path)
    assert config.precision == "auto"
    expected = resolve_precision("auto")
    assert config.resolved_precision() == expected.precision
    if not torch.cuda.is_available() and precision.cpu_native_bf16() is None:
        assert expected.precision == "fp32"


def test_runner_dtype_follows_the_same_rule(monkeypatch):
    from ovis.serve.runner import pick_dtype

    fake_cpu(monkeypatch, None)
    assert pick_dtype(torch.device("cpu")) == torch.float32
    fake_cpu(monkeypatch, "AMX", fp32=100.0, bf16=400.0)
    assert pick_dtype(torch.device("cpu"), "auto") == torch.bfloat16
    assert pick_dtype(torch.device("cpu"), "float32") == torch.float32


def test_machine_names_the_cpu_family_and_its_vector_extensions(monkeypatch):
    # A virtual machine may only say "AMD EPYC": the family and model numbers tell a Zen 2 from a Zen 3.
    info = {"model name": "AMD EPYC", "cpu family": "25", "model": "1",
            "flags": "fpu sse2 avx avx2 fma avx512f avx512_bf16 amx_tile"}
    monkeypatch.setattr(precision, "_cpuinfo", lambda *keys: next((info[k] for k in keys if k in info), None))
    assert precision.cpu_model() == "AMD EPYC (family 25, model 1)"
    assert precision.cpu_features() == ["avx2", "fma", "avx512f", "avx512_bf16", "amx_tile"]
    assert precision.machine()["cpu_features"] == precision.cpu_features()
    info.pop("cpu family")  # an Arm CPU, say: the name alone
    assert precision.cpu_model() == "AMD EPYC"
