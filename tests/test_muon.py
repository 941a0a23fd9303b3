"""``optimizer: muon``: torch's Muon on the hidden matrices, AdamW on the rest, in the PyTorch engine."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

import ovis
from ovis.train import muon as muon_module
from ovis.train.muon import MuonWithAdamW, muon_matrices, newton_schulz
from tests.test_train import _compose, _config, _run, _weights


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> tuple[Path, Path]:
    from ovis.data.synth import SynthSpec, write_synthetic_dataset

    root = tmp_path_factory.mktemp("muon")
    info = write_synthetic_dataset(root / "data", SynthSpec(train_images=16, eval_images=1), progress=False)
    return _compose(root / "model"), Path(info)


def _muon_config(toy, out: Path, **fields):
    model, info = toy
    base = dict(
        data={"dataset_info": info, "datasets": ["synth-conversations"]},
        deepspeed=None,
        optimizer="muon",
        muon_lr=0.02,
        lr=1e-3,
        max_steps=6,
        save_steps=3,
    )
    return _config(model, info, out, **{**base, **fields})


def test_muon_takes_the_hidden_matrices_and_leaves_the_tables(toy):
    model, _ = ovis.load(toy[0])
    names = {id(p): n for n, p in model.named_parameters()}
    chosen = {names[i] for i in muon_matrices(model)}
    assert "llm.model.layers.0.self_attn.q_proj.weight" in chosen
    assert "llm.model.layers.3.mlp.down_proj.weight" in chosen
    assert any(n.startswith("visual_tokenizer.backbone.") and n.endswith("fc1.weight") for n in chosen)
    left = set(names.values()) - chosen
    # Tables (tied LM head included), the VTE, the visual head (an output layer: it scores the visual
    # vocabulary), position tables, the patch convolution, vectors.
    assert {"llm.model.embed_tokens.weight", "vte.weight", "visual_tokenizer.head.0.weight"} <= left
    assert any("position_embedding" in n for n in left) and any("patch_embedding" in n for n in left)
    assert all(p.ndim == 2 for n, p in model.named_parameters() if n in chosen)


def test_a_muon_run_learns_and_resumes_exactly(toy, tmp_path, one_thread):
    config = _muon_config(toy, tmp_path / "a")
    reference = _run(config)
    optimizer = reference.engine.optimizer
    assert isinstance(optimizer, MuonWithAdamW) and optimizer.muon is not None and optimizer.adamw is not None
    # Both halves trained, at their own rates on the same schedule.
    assert optimizer.muon.state and optimizer.adamw.state
    rates = {g["name"]: g["lr"] / g["initial_lr"] for g in optimizer.param_groups}
    assert len(set(round(r, 12) for r in rates.values())) == 1, rates
    assert {g["initial_lr"] for g in optimizer.muon.param_groups} == {0.02}
    losses = [r["loss"] for r in reference.records]
    assert losses[-1] < losses[0], losses
    # The same run with AdamW alone ends elsewhere.
    adamw = _run(_muon_config(toy, tmp_path / "w", optimizer="adamw"))
    assert [r["loss"] for r in adamw.records][1:] != losses[1:]

    # Stopped after the step-3 checkpoint and resumed: the same steps, losses and weights.
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "a" / "checkpoints" / "step-3", tmp_path / "b" / "checkpoints" / "step-3")
    resumed = _run(config.model_copy(update={"output_dir": tmp_path / "b"}), resume=True)
    assert [r["loss"] for r in resumed.records] == losses[3:]
    a, b = _weights(tmp_path / "a" / "final"), _weights(tmp_path / "b" / "final")
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_muon_is_refused_under_deepspeed_and_adamw_runs_keep_their_hash(toy, tmp_path):
    with pytest.raises(ValidationError, match="optimizer: muon runs in the PyTorch engine; set deepspeed: null"):
        _muon_config(toy, tmp_path / "x", deepspeed="zero2")
    adamw = _muon_config(toy, tmp_path / "x", optimizer="adamw")
    # Runs from before the optimizer keys resume: with AdamW the keys are out of the hash.
    assert adamw.config_hash() == adamw.model_copy(update={"muon_lr": 0.5}).config_hash()
    muon = _muon_config(toy, tmp_path / "x")
    assert muon.config_hash() != adamw.config_hash()
    assert muon.config_hash() != muon.model_copy(update={"muon_lr": 0.5}).config_hash()


def test_newton_schulz_in_float32_is_torchs_iteration_without_the_bf16_rounding():
    from torch.optim import _muon

    torch.manual_seed(0)
    for shape in [(32, 96), (96, 32), (64, 64)]:
        grad = torch.randn(*shape)
        ours = newton_schulz(grad, (3.4445, -4.775, 2.0315), 5, 1e-7)
        theirs = _muon._zeropower_via_newtonschulz(grad, (3.4445, -4.775, 2.0315), 5, 1e-7)
        assert ours.dtype == torch.float32 and theirs.dtype == torch.bfloat16 and ours.shape == grad.shape
        # The same iteration: apart only by bf16's rounding (~3 significant digits, compounded).
        assert torch.allclose(ours, theirs.float(), atol=0.05), (ours - theirs.float()).abs().max()
        assert torch.allclose(
            ours, newton_schulz(grad, (3.4445, -4.775, 2.0315), 5, 1e-7, torch.float64).float(), atol=1e-5
        )
        # Orthogonalised: singular values pulled into roughly [0.5, 1.5] from a wide spread.
        s = torch.linalg.svdvals(ours)
        assert 0.3 < s.min() and s.max() < 1.6, s


def _plain_newton_schulz(grad: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The textbook quintic iteration in float64, on the matrix as given (no Gram shortcut)."""
    a, b, c = (3.4445, -4.775, 2.0315)
    x = grad.double()
    tall = x.size(0) > x.size(1)
    x = (x.T if tall else x) / x.norm()
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if tall else x).float()


def test_the_gram_form_is_the_plain_iteration(monkeypatch):
    from ovis.train import muon

    calls = []
    real = muon._newton_schulz_gram
    monkeypatch.setattr(muon, "_newton_schulz_gram", lambda *args: calls.append(args[0].shape) or real(*args))
    torch.manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(128, 128))
    v, _ = torch.linalg.qr(torch.randn(512, 128))
    ill = u @ torch.diag(torch.logspace(0, -4, 128)) @ v.T  # singular values from 1 down to 1e-4
    for grad in [torch.randn(128, 512), torch.randn(512, 128), torch.randn(32, 96), ill, torch.randn(64, 100)]:
        ours = newton_schulz(grad, (3.4445, -4.775, 2.0315), 5, 1e-7)
        err = (ours - _plain_newton_schulz(grad)).abs().max().item()
        # Ill-conditioned, the products of the Gram form keep less: 3e-5 here (the plain float32
        # iteration 1e-6, torch's bfloat16 one ~1e-2), on entries of about 0.13.
        assert err < (1e-4 if grad is ill else 1e-5), (tuple(grad.shape), err)
    # The Gram form ran where the long side is at least twice the short one, and only there.
    assert calls == [(128, 512), (128, 512), (32, 96), (128, 512)]


def test_a_float32_run_orthogonalises_in_float32_and_a_bf16_run_as_torch_does(toy, monkeypatch, tmp_path, one_thread):
    seen = []
    real = muon_module.newton_schulz

    def spy(grad, coefficients, steps, eps, dtype=torch.float32):
        seen.append(dtype)
        return real(grad, coefficients, steps, eps, dtype)

    from torch.optim import _muon

    torchs = _muon._zeropower_via_newtonschulz
    monkeypatch.setattr(muon_module, "newton_schulz", spy)
    _run(_muon_config(toy, tmp_path / "fp32", max_steps=1))
    assert seen and set(seen) == {torch.float32}
    assert _muon._zeropower_via_newtonschulz is torchs  # put back after each step
    seen.clear()
    _run(_muon_config(toy, tmp_path / "bf16", max_steps=1, precision="bf16"))
    assert seen == []  # torch's own bf16 iteration
