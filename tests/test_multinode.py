"""Multi-node launches, as far as one machine allows: two "nodes" on localhost, each a separate
launch of one rank over gloo (``torchrun --nnodes 2 --node-rank R`` and the DeepSpeed launcher with
a hostfile and ``--no_ssh``), train exactly as one launch of two ranks does (docs/multi-node.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import ovis
from ovis.ports import free_port
from ovis.train import checkpoint as ckpt
from tests.test_train import _env

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
STEPS = 4

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (VENV_BIN / "torchrun").exists(), reason="torchrun not installed"),
]


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    """A 4-step ZeRO-2 run of the toy model on 8 synthetic conversations; ``output_dir`` is set by
    ``--set`` per launch."""
    from ovis.data.synth import SynthSpec, write_synthetic_dataset

    root = tmp_path_factory.mktemp("multinode")
    torch.manual_seed(0)
    ovis.compose(vit="clip-toy", llm="qwen-toy", visual_vocab_size=256, out=root / "model")
    info = write_synthetic_dataset(root / "data", SynthSpec(train_images=8, eval_images=1), progress=False)
    fields = {
        "stage": 3,
        "model": str(root / "model"),
        "output_dir": str(root / "unused"),
        "data": {"dataset_info": str(info), "datasets": ["synth-conversations"]},
        "per_device_batch_size": 2,
        "lr": 3e-3,
        "max_steps": STEPS,
        "save_steps": 2,
        "logging_steps": 1,
        "seed": 0,
        "precision": "fp32",
        "deepspeed": "zero2",
    }
    path = root / "train.yaml"
    path.write_text(yaml.safe_dump(fields))
    return path


def _train_args(config: Path, out: Path) -> list[str]:
    return ["train", "--no-progress", "--config", str(config), "--set", f"output_dir={out}"]


def _launch_all(commands: list[list[str]]) -> None:
    """Start every command at once (the "nodes" meet at the rendezvous) and wait for all."""
    procs = [
        subprocess.Popen(c, env=_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for c in commands
    ]
    try:
        outputs = [p.communicate(timeout=900)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for command, proc, output in zip(commands, procs, outputs, strict=True):
        assert proc.returncode == 0, f"{' '.join(command)} exited {proc.returncode}:\n{output[-4000:]}"


def _steps(out: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def one_launch(config, tmp_path_factory) -> Path:
    """The reference: one ``torchrun`` launch of two ranks on this machine."""
    out = tmp_path_factory.mktemp("one-launch") / "run"
    _launch_all(
        [
            [
                str(VENV_BIN / "torchrun"),
                "--nproc-per-node",
                "2",
                "--master-port",
                str(free_port()),
                "-m",
                "ovis",
                *_train_args(config, out),
            ]
        ]
    )
    return out


def _assert_trained_alike(out: Path, reference: Path) -> None:
    ours, theirs = _steps(out), _steps(reference)
    assert sorted(ours) == list(range(1, STEPS + 1))
    for step in ours:
        assert ours[step]["sample_ids"] == theirs[step]["sample_ids"], step
        assert len(ours[step]["sample_ids"]) == 4  # two ranks x 2 samples
        # the same two ranks and collectives; the sum may take another path (shared memory on
        # one node, gloo's sockets across two): fp32 rounding at most
        assert ours[step]["loss"] == pytest.approx(theirs[step]["loss"], rel=1e-5), step
    state = json.loads((out / "checkpoints" / f"step-{STEPS}" / ckpt.STATE_FILE).read_text())
    assert state["world_size"] == 2
    assert sorted(p.name for p in (out / "checkpoints" / f"step-{STEPS}").glob("rng_state_*.pt")) == [
        "rng_state_0.pt",
        "rng_state_1.pt",
    ]
    ovis.load(out / "final")  # rank 0 exported a loadable model
    a, b = (
        load_file(str(out / "final" / "model.safetensors")),
        load_file(str(reference / "final" / "model.safetensors")),
    )
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


def test_two_torchrun_nodes_train_as_one_launch_of_two_ranks(config, one_launch, tmp_path):
    out, port = tmp_path / "run", free_port()
    _launch_all(
        [
            [
                str(VENV_BIN / "torchrun"),
                "--nnodes",
                "2",
                "--nproc-per-node",
                "1",
                "--node-rank",
                str(node),
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                str(port),
                "-m",
                "ovis",
                *_train_args(config, out),
            ]
            for node in (0, 1)
        ]
    )
    _assert_trained_alike(out, one_launch)


@pytest.mark.skipif(not (VENV_BIN / "deepspeed").exists(), reason="the deepspeed launcher is not installed")
def test_two_deepspeed_launcher_nodes_from_a_hostfile_train_as_one_launch(config, one_launch, tmp_path):
    # Across real machines the launcher starts every node itself over ssh (pdsh); with --no_ssh
    # each node is launched by hand, as here, from the same hostfile.
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    out, port = tmp_path / "run", free_port()
    _launch_all(
        [
            [
                str(VENV_BIN / "deepspeed"),
                "--hostfile",
                str(hostfile),
                "--no_ssh",
                "--node_rank",
                str(node),
                "--master_addr",
                "127.0.0.1",
                "--master_port",
                str(port),
                "--no_local_rank",
                "--module",
                "ovis",
                *_train_args(config, out),
            ]
            for node in (0, 1)
        ]
    )
    _assert_trained_alike(out, one_launch)
