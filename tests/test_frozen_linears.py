"""The LLM's frozen Linear layers over each rank's own rows under ZeRO-3 (ovis.train.frozen_linears):
outputs and input gradients equal the plain layers' for partitions that split rows between ranks,
a bias, a rank with no token, several chunks, float32 and bf16; the choice of rows or gathering
follows the elements each would move, the same on every rank."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from ovis.train.distributed import local_launch_env
from ovis.train.frozen_linears import rows_limit
from tests.zero3_fakes import join, leave, on_ranks, partitioned


def _partition(layer: nn.Linear, rank: int, world: int) -> None:
    layer.weight = partitioned(layer.weight, rank, world)
    if layer.bias is not None:
        layer.bias = partitioned(layer.bias, rank, world)


class _Block(nn.Module):
    """Two frozen Linear layers around a trainable one (the gradient must cross all three)."""

    def __init__(self, width: int, inner: int, bias: bool) -> None:
        super().__init__()
        self.up = nn.Linear(width, inner, bias=bias)
        self.mid = nn.Linear(inner, inner)
        self.down = nn.Linear(inner, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.nn.functional.gelu(self.mid(self.up(x))))


def _check_on_rank(rank: int, world: int, port: int, out: str, case: dict) -> None:
    join(rank, world, port)
    from ovis.train import frozen_linears

    frozen_linears.CHUNK_ELEMENTS, frozen_linears.MIN_CHUNK_TOKENS = case["chunk_elements"], 1
    dtype = getattr(torch, case["dtype"])
    torch.manual_seed(0)  # the same layers on every rank
    reference = _Block(case["width"], case["inner"], case["bias"]).to(dtype)
    planned = _Block(case["width"], case["inner"], case["bias"]).to(dtype)
    planned.load_state_dict(reference.state_dict())
    reference.requires_grad_(False).mid.requires_grad_(True)
    planned.requires_grad_(False).mid.requires_grad_(True)
    if case.get("lora"):  # LoRA on the frozen layers: their base layers are planned, the adapters train
        from peft import LoraConfig, get_peft_model

        def adapted(block: nn.Module) -> nn.Module:
            torch.manual_seed(1)  # the same random adapters (B not zero: they change the output)
            lora = LoraConfig(r=4, lora_alpha=8, target_modules=["up", "down"], init_lora_weights=False)
            return get_peft_model(block, lora).base_model.model

        reference, planned = adapted(reference), adapted(planned)
        for block in (reference, planned):
            block.mid.requires_grad_(True)  # (peft froze everything but the adapters)
    for name in ("up", "down"):
        stored = getattr(planned, name)
        stored = getattr(stored, "base_layer", stored)
        if case.get("shift") and name == "up":  # another matrix's partitions: the comparison must fail
            stored.weight.data = stored.weight.data.roll(1, 0)
        _partition(stored, rank, world)
    linears = frozen_linears.plan(planned, torch.device("cpu"))

    torch.manual_seed(10 + rank)  # each rank its own tokens
    n = case["tokens"][rank]
    x = torch.randn(n, 2, case["width"]).to(dtype)
    upstream = torch.randn(n, 2, case["width"]).to(dtype)
    chosen = linears.begin(2 * n)
    if case.get("probe_only"):
        Path(out, f"rank{rank}.json").write_text(json.dumps({"chosen": chosen}))
        leave()
        return
    xa = x.clone().requires_grad_(True)
    ya = planned(xa)
    (ya * upstream).float().sum().backward()
    linears.end()
    xb = x.clone().requires_grad_(True)
    yb = reference(xb)
    (yb * upstream).float().sum().backward()

    def error(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
        return (float((a.float() - b.float()).abs().max()), float(b.float().abs().max())) if a.numel() else (0.0, 1.0)

    layer = linears.layers[0]
    report = {
        "planned": [type(getattr(m, "base_layer", m)).__name__ for m in (planned.up, planned.mid, planned.down)],
        "chosen": chosen,
        "rows": layer.rows,
        "split": any(r.split for r in (frozen_linears.row_range(planned.up.weight, k) for k in range(world))),
        "chunks": -(-max(case["tokens"]) * 2 // layer.chunk_tokens()),
        "output": error(ya, yb),
        "grad_x": error(xa.grad, xb.grad),
        "grad_mid": error(planned.mid.weight.grad, reference.mid.weight.grad),
        "grad_lora": [
            error(a.grad, b.grad)
            for (name, a), b in zip(planned.named_parameters(), reference.parameters(), strict=True)
            if "lora_" in name
        ],
        "keys": sorted(planned.state_dict()) == sorted(reference.state_dict()),
        "inactive_after_end": not any(lay.active for lay in linears.layers),
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(report))
    leave()


def _run(tmp_path: Path, world: int, **case) -> list[dict]:
    return on_ranks(_check_on_rank, tmp_path, world, case)


@pytest.mark.parametrize(
    ("world", "width", "inner", "bias", "tokens", "chunk_elements"),
    [
        (2, 32, 96, True, [3, 5], 2**24),  # rows split evenly, a bias, one chunk
        (3, 14, 41, True, [1, 0, 2], 3 * 41 * 2),  # rows split between ranks, a rank with no token, chunks
    ],
)
def test_outputs_and_gradients_equal_the_plain_layers_in_float32(
    tmp_path, world, width, inner, bias, tokens, chunk_elements
):
    reports = _run(
        tmp_path, world, width=width, inner=inner, bias=bias, tokens=tokens, chunk_elements=chunk_elements,
        dtype="float32",
    )
    for rank, report in enumerate(reports):
        assert report["planned"] == ["_RowsLinear", "Linear", "_RowsLinear"], rank  # the trainable one left alone
        assert report["chosen"] == 2 and report["inactive_after_end"] and report["keys"], (rank, report)
        for name in ("output", "grad_x", "grad_mid"):
            err, scale = report[name]
            assert err <= 1e-5 * max(1.0, scale), (rank, name, report)
    rows = reports[0]["rows"]
    assert rows[0][0] == 0 and sum(c for _, c in rows) == inner
    assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(rows))  # every row once, in order
    if world == 3:
        assert reports[0]["split"] and reports[0]["chunks"] > 1  # the case really splits rows and chunks


def test_lora_adapters_on_planned_layers_train_as_on_the_plain_ones(tmp_path):
    reports = _run(
        tmp_path, 2, width=32, inner=96, bias=True, tokens=[3, 5], chunk_elements=2**24, dtype="float32", lora=True
    )
    for rank, report in enumerate(reports):
        assert report["planned"] == ["_RowsLinear", "Linear", "_RowsLinear"] and report["chosen"] == 2, rank
        assert len(report["grad_lora"]) == 4, rank  # A and B of two adapted layers
        for err, scale in [report["output"], report["grad_x"], report["grad_mid"], *report["grad_lora"]]:
            assert scale > 0 and err <= 1e-5 * max(1.0, scale), (rank, report)


def test_in_bf16_they_match_the_bf16_layers(tmp_path):
    reports = _run(tmp_path, 2, width=24, inner=64, bias=True, tokens=[5, 2], chunk_elements=2**24, dtype="bfloat16")
    for rank, report in enumerate(reports):
        for name in ("output", "grad_x", "grad_mid"):
            err, scale = report[name]
            assert err <= 2e-2 * max(1.0, scale), (rank, name, report)


def test_a_wrong_partition_fails_the_comparison(tmp_path):
    """The checks above can fail: rows read from another matrix give other outputs."""
    reports = _run(
        tmp_path, 2, width=32, inner=96, bias=False, tokens=[3, 5], chunk_elements=2**24, dtype="float32", shift=True
    )
    for rank, report in enumerate(reports):
        err, scale = report["output"]
        assert err > 0.05 * scale, (rank, report)


def test_a_long_step_leaves_the_layers_to_deepspeed(tmp_path):
    """Over a layer's limit (the rows would move more than its weight) no layer runs over rows; the
    choice is taken from the longest rank, so the ranks agree."""
    width, inner, world = 32, 96, 2
    up, down = rows_limit(width, inner, world), rows_limit(inner, width, world)
    assert (up, down) == (32 * 96 // (2 * 32 + 96), 32 * 96 // (2 * 96 + 32)) == (19, 13)
    for tokens, chosen in (([1, 6], 2), ([1, 8], 1), ([10, 1], 0)):  # x is [n, 2, width]: 2n tokens
        reports = _run(
            tmp_path, world, width=width, inner=inner, bias=False, tokens=tokens, chunk_elements=2**24,
            dtype="float32", probe_only=True,
        )
        assert [r["chosen"] for r in reports] == [chosen, chosen], tokens


# -- LoRA under ZeRO-3 on two gloo ranks ----------------------------------------------------------------
def _lora_on_rank(rank: int, world: int, port: int, out: str, case: dict) -> None:
    """One rank: the same LoRA run (stage 3, ZeRO-3) with the base layers gathered by DeepSpeed and
    over each rank's rows (whatever the step's length)."""
    os.environ.update(local_launch_env(rank, world, port))
    torch.set_num_threads(1)
    from ovis.train import TrainConfig, Trainer, frozen_linears

    begin, limit = frozen_linears.FrozenLinears.begin, frozen_linears.rows_limit
    report = {}
    for name in ("gathered", "rows"):
        frozen_linears.rows_limit = lambda *_, over=name == "rows": 10**9 if over else 0
        chosen = []

        def noted(self, tokens, chosen=chosen):
            chosen.append(begin(self, tokens))
            return chosen[-1]

        frozen_linears.FrozenLinears.begin = noted
        config = TrainConfig.model_validate(
            {
                "stage": 3,
                "model": case["model"],
                "output_dir": str(Path(out) / name),
                "deepspeed": "zero3",
                "precision": "fp32",
                "train_modules": ["llm"],
                "lora": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0},
                "per_device_batch_size": 2,
                "lr": 3e-3,
                "max_steps": 4,
                "save_steps": 100,
                "logging_steps": 1,
                "seed": 0,
                "data": {"dataset_info": case["info"], "datasets": ["synth-conversations"]},
            }
        )
        trainer = Trainer(config, progress=False)
        trainer.setup()
        trainer.fit()
        report[name] = {"losses": [r["loss"] for r in trainer.records], "chosen": chosen}
    frozen_linears.FrozenLinears.begin, frozen_linears.rows_limit = begin, limit
    Path(out, f"rank{rank}.json").write_text(json.dumps(report))


@pytest.mark.slow
def test_lora_under_zero3_trains_over_rows_as_with_the_base_layers_gathered(tmp_path):
    from ovis.data.synth import SynthSpec, write_synthetic_dataset
    from tests.test_train import _compose

    model = _compose(tmp_path / "model")
    info = write_synthetic_dataset(tmp_path / "data", SynthSpec(train_images=8, eval_images=1), progress=False)
    reports = on_ranks(_lora_on_rank, tmp_path, 2, {"model": str(model), "info": str(info)})
    for rank, report in enumerate(reports):
        gathered, rows = report["gathered"], report["rows"]
        assert gathered["chosen"] == [0] * 4 and len(rows["chosen"]) == 4 and min(rows["chosen"]) > 0, (rank, report)
        assert rows["losses"] == pytest.approx(gathered["losses"], rel=1e-5, abs=0), rank
    assert reports[0]["rows"]["losses"][-1] < reports[0]["rows"]["losses"][0]  # the adapters learn
