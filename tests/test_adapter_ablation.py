"""benchmarks/adapter_ablation.py: finished runs are reused only when they are the run asked for
(variant, seed) and ran the same recipe as the rest of the table."""

from __future__ import annotations

import json

import pytest

from ovis.data.synth import QUESTION_TYPES

RECIPE = {
    "steps": {"vision": 450, "stage1": 200, "stage2": 200, "stage3": 1200},
    "train_images": 4000,
    "eval_images": 200,
    "compositional_images": 100,
}


@pytest.fixture
def ablation(repo_script):
    return repo_script("benchmarks/adapter_ablation.py")


def fake_run(directory, *, adapter="structural", blind=False, seed=0, accuracy=0.9, llm="e88f", **recipe):
    (directory / "stage3").mkdir(parents=True)
    steps = [{"step": i, "step_time": 0.25 + 0.01 * (i % 2)} for i in range(20)]
    (directory / "stage3" / "metrics.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))
    report = {
        "accuracy": accuracy,
        "by_type": dict.fromkeys(QUESTION_TYPES, accuracy),
        "compositional": {"accuracy": 0.5},
        "minutes": 9.0,
        "adapter": adapter,
        "blind": blind,
        "recipe": {"seed": seed, **RECIPE, **recipe},
        "told_llm": {"sha256": llm},
    }
    (directory / "report.json").write_text(json.dumps(report))
    return directory


def run(ablation, monkeypatch, out, *reuse: str) -> None:
    argv = ["adapter_ablation.py", "--out", str(out), "--seeds", "0", "1", "--variants", "structural", "mlp"]
    for item in reuse:
        argv += ["--reuse", item]
    monkeypatch.setattr("sys.argv", argv)
    ablation.main()


def test_reused_runs_give_the_table_and_the_means(ablation, monkeypatch, tmp_path, capsys):
    runs = {
        f"{variant}-seed{seed}": fake_run(tmp_path / f"{variant}{seed}", adapter=variant, seed=seed, accuracy=accuracy)
        for variant, seed, accuracy in [
            ("structural", 0, 0.9),
            ("structural", 1, 0.8),
            ("mlp", 0, 0.7),
            ("mlp", 1, 0.6),
        ]
    }
    run(ablation, monkeypatch, tmp_path / "out", *(f"{k}={v}" for k, v in runs.items()))
    summary = {m["variant"]: m for m in json.loads((tmp_path / "out" / "ablation.json").read_text())["summary"]}
    assert summary["structural"]["accuracy"] == pytest.approx(0.85)
    assert summary["mlp"]["accuracy"] == pytest.approx(0.65)
    assert summary["mlp"]["accuracy_sd"] == pytest.approx(0.0707, abs=1e-4)
    assert summary["structural"]["step_s"] == pytest.approx(0.255)
    assert "| structural | 2 | 85.0% ± 7.1% |" in capsys.readouterr().out


def test_a_reused_run_of_another_seed_or_recipe_is_refused(ablation, monkeypatch, tmp_path):
    good = {
        f"{v}-seed{s}": fake_run(tmp_path / f"{v}{s}", adapter=v, seed=s) for v in ("structural", "mlp") for s in (0, 1)
    }
    wrong_seed = fake_run(tmp_path / "wrong-seed", seed=2)
    with pytest.raises(SystemExit, match=r"structural-seed0=.*wrong-seed: that run's seed is 2, not 0"):
        run(
            ablation,
            monkeypatch,
            tmp_path / "out",
            f"structural-seed0={wrong_seed}",
            *(f"{k}={v}" for k, v in good.items() if k != "structural-seed0"),
        )
    longer = fake_run(tmp_path / "longer", adapter="mlp", seed=1, steps={**RECIPE["steps"], "stage3": 1500})
    with pytest.raises(SystemExit, match=r"mlp-seed1 \(.*longer\) ran another recipe .*'stage3': 1500"):
        run(
            ablation,
            monkeypatch,
            tmp_path / "out",
            f"mlp-seed1={longer}",
            *(f"{k}={v}" for k, v in good.items() if k != "mlp-seed1"),
        )
    blind = fake_run(tmp_path / "blind", blind=True, seed=1)
    with pytest.raises(SystemExit, match="that run is adapter=structural, blind=True"):
        run(
            ablation,
            monkeypatch,
            tmp_path / "out",
            f"structural-seed1={blind}",
            *(f"{k}={v}" for k, v in good.items() if k != "structural-seed1"),
        )
    other_llm = fake_run(tmp_path / "other-llm", adapter="mlp", seed=0, llm="3a3f")
    with pytest.raises(SystemExit, match=r"mlp-seed0 \(.*other-llm\) ran another recipe .*'told_llm_sha256': '3a3f'"):
        run(
            ablation,
            monkeypatch,
            tmp_path / "out",
            f"mlp-seed0={other_llm}",
            *(f"{k}={v}" for k, v in good.items() if k != "mlp-seed0"),
        )
