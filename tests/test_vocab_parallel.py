"""The ZeRO-3 token lookup and LM-head loss over each rank's own vocabulary rows
(ovis.train.vocab_parallel): equal to the plain lookup and cross-entropy, gradient included, for
partitions that split rows between ranks, ranks with no token, several chunks, float32 and bf16;
and a stage-1 run on two gloo ranks trains as the gathered run does while the tied embedding is
never held whole."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from ovis.ports import free_port
from ovis.train.distributed import local_launch_env
from tests.zero3_fakes import join, leave, on_ranks, partitioned

WORLD = 2


def _check_on_rank(rank: int, world: int, port: int, out: str, case: dict) -> None:
    join(rank, world, port)
    from ovis.train import vocab_parallel

    vocab_parallel.CHUNK_ELEMENTS, vocab_parallel.MIN_CHUNK_TOKENS = case["chunk_elements"], 1
    dtype = getattr(torch, case["dtype"])
    vocab, hidden = case["vocab"], case["hidden"]
    torch.manual_seed(0)  # the same matrix on every rank
    weight = torch.randn(vocab, hidden).to(dtype)
    torch.manual_seed(10 + rank)  # each rank its own tokens
    n = case["tokens"][rank]
    ids = torch.randint(0, vocab, (n,))
    states = torch.randn(n, hidden).to(dtype).requires_grad_(True)
    upstream = torch.randn(n)

    # ("shift": the partitions of another matrix, rows moved by one: the comparison must fail)
    stored = weight.roll(1, 0) if case.get("shift") else weight
    param = partitioned(stored, rank, world)
    shard = vocab_parallel.row_shard(param, None)
    vp = vocab_parallel.VocabParallel(param, None)
    if case.get("bad_rank") is not None:
        if rank == case["bad_rank"]:
            ids[-1] = vocab
        try:
            vp.lookup(ids)
            error = None
        except IndexError as exc:
            error = str(exc)
        Path(out, f"rank{rank}.json").write_text(json.dumps({"error": error}))
        leave()
        return
    looked_up = vp.lookup(ids)
    losses = vp.losses(states, ids)
    (losses * upstream).sum().backward()
    grad = states.grad.clone()

    reference = states.detach().clone().requires_grad_(True)
    expected = F.cross_entropy((reference @ weight.T).float(), ids, reduction="none")
    (expected * upstream).sum().backward()
    report = {
        "rows": [shard.first, shard.count, shard.last is not None],
        "chunks": -(-max(case["tokens"]) // vp.chunk_tokens()),
        "lookup_equal": bool(torch.equal(looked_up, weight[ids])),
        "loss_error": float((losses - expected).abs().max()) if n else 0.0,
        "loss_scale": float(expected.abs().max()) if n else 1.0,
        "grad_error": float((grad.float() - reference.grad.float()).abs().max()) if n else 0.0,
        "grad_scale": float(reference.grad.float().abs().max()) if n else 1.0,
        "weight_untouched": bool(torch.equal(param.ds_tensor, partitioned(stored, rank, world).ds_tensor)),
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(report))
    leave()


def _run(tmp_path: Path, world: int, **case) -> list[dict]:
    return on_ranks(_check_on_rank, tmp_path, world, case)


@pytest.mark.parametrize(
    ("world", "vocab", "hidden", "tokens", "chunk_elements"),
    [
        (2, 64, 16, [9, 5], 2**24),  # rows split evenly, one chunk
        (3, 37, 10, [11, 0, 7], 37 * 4),  # a row split between ranks, a rank with no token, 3 chunks
    ],
)
def test_the_lookup_and_the_loss_equal_the_plain_ones_in_float32(
    tmp_path, world, vocab, hidden, tokens, chunk_elements
):
    reports = _run(
        tmp_path, world, vocab=vocab, hidden=hidden, tokens=tokens, chunk_elements=chunk_elements, dtype="float32"
    )
    owned = sorted((r["rows"][0], r["rows"][1]) for r in reports)
    assert owned[0][0] == 0 and sum(c for _, c in owned) == vocab  # every row owned by exactly one rank
    assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(owned))
    if vocab * hidden % world or (vocab * hidden // world) % hidden:
        assert any(r["rows"][2] for r in reports)  # the case really has a split row
    if chunk_elements < 2**24:
        assert all(r["chunks"] > 1 for r in reports)
    for rank, report in enumerate(reports):
        assert report["lookup_equal"], rank
        assert report["loss_error"] <= 1e-5 * max(1.0, report["loss_scale"]), (rank, report)
        assert report["grad_error"] <= 1e-5 * max(1.0, report["grad_scale"]), (rank, report)
        assert report["weight_untouched"], rank


def test_in_bf16_the_lookup_is_exact_and_the_loss_is_the_bf16_heads(tmp_path):
    reports = _run(tmp_path, 2, vocab=50, hidden=24, tokens=[6, 13], chunk_elements=50 * 5, dtype="bfloat16")
    for rank, report in enumerate(reports):
        assert report["lookup_equal"], rank
        # bf16 scores as the head's Linear rounds them; the sums over ranks add one rounding
        assert report["loss_error"] <= 1e-5 * max(1.0, report["loss_scale"]), (rank, report)
        assert report["grad_error"] <= 2e-2 * report["grad_scale"], (rank, report)


def test_a_wrong_partition_fails_the_comparison(tmp_path):
    """The checks above can fail: rows read from the wrong place give another lookup and loss."""
    reports = _run(tmp_path, 2, vocab=64, hidden=16, tokens=[9, 5], chunk_elements=2**24, dtype="float32", shift=True)
    for rank, report in enumerate(reports):
        assert not report["lookup_equal"], rank
        assert report["loss_error"] > 0.1 and report["grad_error"] > 0.1 * report["grad_scale"], (rank, report)


def test_a_token_id_outside_the_vocabulary_stops_every_rank_with_its_name(tmp_path):
    # Raised on the rank that has it alone, the other would wait for it in the next collective.
    reports = _run(tmp_path, 2, vocab=40, hidden=8, tokens=[5, 6], chunk_elements=2**24, dtype="float32", bad_rank=1)
    for report in reports:
        assert report["error"] == "token id 40 (rank 1's batch) outside the embedding's 40 rows"


def test_only_frozen_zero3_partitions_over_several_ranks_are_used_over_rows():
    """Without ZeRO-3 partitions, or where the matrix trains, DeepSpeed's own path stays (no group
    needed to decide: these are settled before any collective)."""
    from ovis.train import vocab_parallel

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(10, 4)
            self.head = torch.nn.Linear(4, 10, bias=False)

        def get_input_embeddings(self) -> torch.nn.Module:
            return self.embed

        def get_output_embeddings(self) -> torch.nn.Module:
            return self.head

    plain = Tiny()
    assert vocab_parallel.plan(plain, torch.device("cpu")) == (None, None)  # ZeRO-2 / one process
    cut = Tiny()
    for module in (cut.embed, cut.head):
        module.weight = partitioned(module.weight.detach(), 0, 2)
        module.weight.requires_grad_(True)  # stage 3: the LLM trains
    assert vocab_parallel.plan(cut, torch.device("cpu")) == (None, None)


# -- a stage-1 run on two gloo ranks --------------------------------------------------------------------
def _train_on_rank(rank: int, port: int, model: str, info: str, out: str) -> None:
    """One rank: the same stage-1 ZeRO-3 run twice, the matrices gathered by DeepSpeed (the plans
    turned off) and over the ranks' rows (the frozen Linear layers too, whatever the step's length),
    noting the most elements of the tied embedding and of the decoder's Linear weights held."""
    os.environ.update(local_launch_env(rank, WORLD, port))
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    from ovis.train import TrainConfig, Trainer, frozen_linears, vocab_parallel
    from ovis.train.step import causal_lm

    planned, planned_linears, limit = vocab_parallel.plan, frozen_linears.plan, frozen_linears.rows_limit
    begin = frozen_linears.FrozenLinears.begin
    for name in ("gathered", "rows", "mixed"):
        vocab_parallel_on = name != "gathered"
        config = TrainConfig.model_validate(
            {
                "stage": 1,
                "model": model,
                "output_dir": str(Path(out) / name),
                "deepspeed": "zero3",
                "precision": "fp32",
                "train_modules": ["visual_tokenizer.head", "vte"],
                "per_device_batch_size": 4,
                "lr": 3e-3,
                "max_steps": 3,
                "save_steps": 3,
                "logging_steps": 1,
                "seed": 0,
                "data": {"dataset_info": info, "datasets": ["synth-conversations"]},
            }
        )
        vocab_parallel.plan = planned if vocab_parallel_on else (lambda *_, **__: (None, None))
        frozen_linears.plan = planned_linears if vocab_parallel_on else (lambda *_, **__: None)
        # rows: every frozen layer over its rows in every step (the toy's layers are small next to its
        # steps). mixed: the widening layers only, and only in even steps (odd ones taken as too
        # long): DeepSpeed gathers the other layers, and its trace of the step changes from step to step.
        frozen_linears.rows_limit = lambda i, o, w, every=name == "rows": 10**9 if every or o > i else 0
        steps = []

        def alternate(self, tokens, steps=steps):
            steps.append(begin(self, tokens if len(steps) % 2 == 0 else 10**10))
            return steps[-1]

        frozen_linears.FrozenLinears.begin = alternate if name == "mixed" else begin
        trainer = Trainer(config, progress=False)
        trainer.setup()
        step = trainer.engine.engine.module
        lm = causal_lm(step.model.llm)
        weight = lm.get_input_embeddings().weight
        linears = [m.weight for m in lm.get_decoder().layers.modules() if isinstance(m, torch.nn.Linear)]
        held, linears_held = [], []

        def note(*_: object, weight=weight, held=held, sums=linears_held, linears=linears) -> None:
            held.append(weight.data.numel())
            sums.append(sum(w.data.numel() for w in linears))

        for module in lm.modules():
            module.register_forward_pre_hook(note)
            module.register_forward_hook(note)
        for layer in lm.get_decoder().layers:
            layer.register_full_backward_hook(note)
        trainer.fit()
        trainer.export()
        report = {
            "losses": [r["loss"] for r in trainer.records],
            "tokens": [r["tokens"] for r in trainer.records],
            "planned": [v is not None for v in step._vocab] + [step._linears is not None],
            "most_held": max(held),
            "whole": int(weight.ds_numel),
            "linears_most_held": max(linears_held),
            "chosen": steps,
            "layers": len(step._linears.layers) if step._linears else 0,
            "largest_linear": max(int(w.ds_numel) for w in linears),
            "probes": len(held),
        }
        Path(out, f"{name}-rank{rank}.json").write_text(json.dumps(report))
    vocab_parallel.plan, frozen_linears.plan, frozen_linears.rows_limit = planned, planned_linears, limit
    frozen_linears.FrozenLinears.begin = begin


@pytest.mark.slow
def test_stage1_on_two_ranks_trains_as_the_gathered_run_without_the_frozen_matrices_whole(tmp_path):
    from ovis.data.synth import SynthSpec, write_synthetic_dataset
    from tests.test_train import _compose, _weights

    model = _compose(tmp_path / "model")
    info = write_synthetic_dataset(tmp_path / "data", SynthSpec(train_images=16, eval_images=1), progress=False)
    mp.spawn(_train_on_rank, args=(free_port(), str(model), str(info), str(tmp_path)), nprocs=WORLD, join=True)
    runs = {
        name: [json.loads((tmp_path / f"{name}-rank{r}.json").read_text()) for r in range(WORLD)]
        for name in ("gathered", "rows", "mixed")
    }
    for rank in range(WORLD):
        gathered, rows = runs["gathered"][rank], runs["rows"][rank]
        assert rows["planned"] == [True, True, True] and gathered["planned"] == [False, False, False], rank
        assert rows["losses"] == pytest.approx(gathered["losses"], rel=1e-5, abs=0), rank
        assert rows["tokens"] == gathered["tokens"], rank
        # DeepSpeed gathers the whole matrix for the lookup and the head; over the rows, never.
        assert gathered["most_held"] == gathered["whole"], rank
        assert rows["probes"] > 0 and rows["most_held"] == 0, rank
        # and the decoder's frozen Linear weights likewise (ovis.train.frozen_linears)
        assert gathered["linears_most_held"] >= gathered["largest_linear"] > 0, rank
        assert rows["linears_most_held"] == 0, rank
        mixed = runs["mixed"][rank]
        assert mixed["losses"] == pytest.approx(gathered["losses"], rel=1e-5, abs=0), rank
        assert 0 < mixed["linears_most_held"], rank
        widening = mixed["chosen"][0]  # (gate and up: wider out than in)
        assert mixed["chosen"] == [widening, 0, widening] and 0 < widening < mixed["layers"], (rank, mixed)
    assert runs["rows"][0]["losses"][-1] < runs["rows"][0]["losses"][0]  # it trained
    a, b = _weights(tmp_path / "gathered" / "final"), _weights(tmp_path / "rows" / "final")
    c = _weights(tmp_path / "mixed" / "final")
    initial = _weights(model)
    moved = [k for k in a if not torch.equal(a[k], initial[k])]
    assert any(k.startswith("vte") for k in moved) and not any(k.startswith("llm.") for k in moved)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6, msg=key)
        torch.testing.assert_close(c[key], a[key], rtol=1e-4, atol=1e-6, msg=key)
