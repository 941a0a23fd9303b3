"""The LLM's frozen ``nn.Linear`` layers run over each rank's own rows under ZeRO-3, when that moves less.

DeepSpeed gathers a layer's whole weight before the layer runs. A frozen weight (the LLM in stages 1
and 2, LoRA's base layers) can instead be used where its rows lie, as :mod:`ovis.train.vocab_parallel`
does for the vocabulary: the ranks all-gather their tokens' inputs, each computes the outputs of its
own rows for every token, and an all-to-all hands each rank its own tokens' full outputs. The
backward pass sends the output gradients the other way and sums the input gradients over the ranks
(``reduce_scatter``). No weight is gathered and nothing is saved for the backward pass: under
gradient checkpointing DeepSpeed keeps a recomputed block's frozen weights gathered until the block's
backward pass ends (one whole decoder layer per rank); over the rows none is.

Per rank that moves about ``world * tokens * in + tokens * out`` elements instead of the weight's
``in * out``: fewer while a micro-batch is small next to the weight (stage 1's short samples, a CPU
run), more for long packed rows on GPUs, where DeepSpeed's gathering (with its prefetch) is kept.
Each step every rank takes the same choice for every layer, from the most tokens any rank has:
the rows where they move fewer elements (:func:`rows_limit`), DeepSpeed otherwise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ovis.train.vocab_parallel import (
    RowShard,
    all_gather_single,
    gather_padded,
    group_of,
    head_fragment,
    most_over_ranks,
    reduce_scatter_single,
    row_range,
    shard_from,
    usable,
)

logger = logging.getLogger("ovis.train")

#: A chunk's gathered inputs (tokens of every rank x the layer's widest side) stay under this many
#: elements (8 MiB in bf16).
CHUNK_ELEMENTS = 2**22
MIN_CHUNK_TOKENS = 16


@dataclass(eq=False)
class RowsLayer:
    """One planned layer: its group, every rank's rows, and this step's state."""

    #: the layer's weight and bias, read once at planning: inside a forward pass DeepSpeed gathers a
    #: parameter read through its module (``linear.weight``)
    weight: nn.Parameter
    full_bias: nn.Parameter | None
    group: Any
    rank: int
    world: int
    #: ``(first row, rows)`` of every rank, in rank order (together: every row once)
    rows: list[tuple[int, int]]
    #: over the rows while a step's micro-batches have at most this many tokens per rank
    rows_limit: int
    active: bool = False
    shard: RowShard | None = None
    bias: torch.Tensor | None = field(default=None, repr=False)

    @property
    def in_features(self) -> int:
        return int(self.weight.ds_shape[1])

    @property
    def out_features(self) -> int:
        return int(self.weight.ds_shape[0])

    def chunk_tokens(self) -> int:
        widest = max(self.in_features, self.out_features)
        return max(MIN_CHUNK_TOKENS, CHUNK_ELEMENTS // (self.world * widest))

    def longest(self, n: int) -> int:
        """The most tokens any rank passes this call (every rank calls)."""
        return most_over_ranks(n, self.world, self.group, self.shard.full.device)


class _RowsLinear(nn.Linear):
    """The class a planned ``nn.Linear`` is given: while its step is over the rows its calls skip
    the module hooks (DeepSpeed's gathering among them) and run :class:`_Rows`; otherwise it is the
    plain layer. State-dict keys, ``isinstance`` and peft's wrapping stay as they were."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        layer = self.__dict__.get("_ovis_rows")
        if layer is not None and layer.active and len(args) == 1 and not kwargs:
            return _Rows.apply(args[0], layer)
        return super().__call__(*args, **kwargs)


class _Rows(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, layer: RowsLayer) -> torch.Tensor:
        shard, world = layer.shard, layer.world
        flat = x.reshape(-1, layer.in_features).to(shard.full.dtype)
        n, chunk = flat.shape[0], layer.chunk_tokens()
        longest = layer.longest(n)
        out = torch.empty(n, layer.out_features, dtype=flat.dtype, device=flat.device)
        mine = shard.count
        for begin in range(0, longest, chunk):
            every = gather_padded(flat[begin : begin + chunk], chunk, world, layer.group)
            scores = shard.scores(every)  # [world * chunk, my rows]
            if layer.bias is not None:
                scores = scores + layer.bias
            pieces = torch.empty(chunk * layer.out_features, dtype=flat.dtype, device=flat.device)
            dist.all_to_all_single(
                pieces,
                scores.contiguous().view(-1),
                output_split_sizes=[chunk * count for _, count in layer.rows],
                input_split_sizes=[chunk * mine] * world,
                group=layer.group,
            )
            m = max(0, min(chunk, n - begin))
            offset = 0
            for first, count in layer.rows:
                block = pieces[offset : offset + chunk * count].view(chunk, count)
                out[begin : begin + m, first : first + count] = block[:m]
                offset += chunk * count
        ctx.layer, ctx.shape, ctx.dtype, ctx.longest, ctx.chunk = layer, x.shape, x.dtype, longest, chunk
        return out.view(*x.shape[:-1], layer.out_features)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, None]:
        layer, chunk, world = ctx.layer, ctx.chunk, ctx.layer.world
        shard = layer.shard
        grads = grad_out.reshape(-1, layer.out_features).to(shard.full.dtype)
        n = grads.shape[0]
        grad_in = torch.empty(n, layer.in_features, dtype=grads.dtype, device=grads.device)
        mine = shard.count
        for begin in range(0, ctx.longest, chunk):
            padded = torch.zeros(chunk, layer.out_features, dtype=grads.dtype, device=grads.device)
            m = max(0, min(chunk, n - begin))
            padded[:m] = grads[begin : begin + m]
            send = torch.cat([padded[:, first : first + count].reshape(-1) for first, count in layer.rows])
            mine_of_every = torch.empty(world * chunk * mine, dtype=grads.dtype, device=grads.device)
            dist.all_to_all_single(
                mine_of_every,
                send,
                output_split_sizes=[chunk * mine] * world,
                input_split_sizes=[chunk * count for _, count in layer.rows],
                group=layer.group,
            )
            partial = shard.backward(mine_of_every.view(world * chunk, mine))  # [world * chunk, in]
            summed = torch.empty(chunk, layer.in_features, dtype=grads.dtype, device=grads.device)
            reduce_scatter_single(summed, partial.contiguous(), group=layer.group)
            grad_in[begin : begin + m] = summed[:m]
        return grad_in.view(ctx.shape).to(ctx.dtype), None


class FrozenLinears:
    """The planned layers of one model; :meth:`begin` before each forward pass, :meth:`end` after
    its backward pass (every rank calls both, at the same points)."""

    def __init__(self, layers: list[RowsLayer]) -> None:
        self.layers = layers

    def begin(self, tokens: int) -> int:
        """Choose, from the most tokens any rank has this step, which layers run over their rows,
        and read their rows; returns how many do."""
        self.end()
        first = self.layers[0]
        longest = most_over_ranks(tokens, first.world, first.group, first.weight.ds_tensor.device)
        chosen = [layer for layer in self.layers if longest <= layer.rows_limit]
        batches: dict[tuple[Any, torch.dtype], list[RowsLayer]] = {}
        for layer in chosen:  # one all-gather per process group and dtype (in practice: one)
            batches.setdefault((layer.group, layer.weight.ds_tensor.dtype), []).append(layer)
        for same in batches.values():
            _read_rows(same)
        for layer in chosen:
            layer.active = True
        return len(chosen)

    def end(self) -> None:
        for layer in self.layers:
            layer.active, layer.shard, layer.bias = False, None, None


def _read_rows(layers: list[RowsLayer]) -> None:
    """Each layer's :class:`RowShard`, its split row completed from the next rank, and its bias rows:
    one all-gather of every layer's head fragment and bias partition (the layers share their group)."""
    group, rank, world = layers[0].group, layers[0].rank, layers[0].world
    pieces = []
    for layer in layers:
        pieces.append(head_fragment(layer.weight, rank))
        if layer.full_bias is not None:
            pieces.append(layer.full_bias.ds_tensor.view(-1).to(pieces[0].dtype))
    mine = torch.cat(pieces)
    every = torch.empty(world * mine.numel(), dtype=mine.dtype, device=mine.device)
    all_gather_single(every, mine, group=group)
    every = every.view(world, -1)
    offset = 0
    for layer in layers:
        width = layer.in_features
        following = every[rank + 1, offset : offset + width] if rank + 1 < world else None
        layer.shard = shard_from(layer.weight, rank, following)
        offset += width
        if layer.full_bias is not None:
            size = layer.full_bias.ds_tensor.numel()
            bias = every[:, offset : offset + size].reshape(-1)  # the ranks' partitions, in order
            first, count = layer.rows[rank]
            layer.bias = bias[first : first + count].clone()
            offset += size


def rows_limit(in_features: int, out_features: int, world: int) -> int:
    """The most tokens per rank for which the rows move no more elements than gathering the weight:
    ``world * t * in + t * out <= in * out``."""
    return (in_features * out_features) // (world * in_features + out_features)


def _eligible(linear: nn.Module, device: torch.device) -> bool:
    if type(linear) is not nn.Linear or not usable(linear.weight, device):
        return False
    if linear.weight.ds_tensor.numel() < int(linear.weight.ds_shape[1]):
        return False  # a partition smaller than a row: a row would span three ranks
    bias = linear.bias
    return bias is None or (not bias.requires_grad and getattr(bias, "ds_tensor", None) is not None)


def plan(lm: nn.Module, device: torch.device) -> FrozenLinears | None:
    """:class:`FrozenLinears` over the causal LM ``lm``'s frozen ZeRO-3-partitioned ``nn.Linear``
    layers on ``device`` over more than one rank (its LM head excepted: see
    :mod:`ovis.train.vocab_parallel`); None when there is none. Every rank calls it, at the same
    point, outside any forward pass."""
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    layers = []
    for module in lm.modules():
        if module is head or not _eligible(module, device):
            continue
        weight = module.weight
        group = group_of(weight)
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        where = [row_range(weight, r) for r in range(world)]
        layer = RowsLayer(
            weight=weight,
            full_bias=module.bias,
            group=group,
            rank=rank,
            world=world,
            rows=[(w.first, w.count) for w in where],
            rows_limit=rows_limit(int(weight.ds_shape[1]), int(weight.ds_shape[0]), world),
        )
        module.__class__ = _RowsLinear
        module._ovis_rows = layer
        layers.append(layer)
    if not layers:
        return None
    limits = sorted({layer.rows_limit for layer in layers})
    logger.info(
        "ZeRO-3: %d frozen Linear layers run over each rank's own rows in steps of at most %s tokens per rank "
        "(fewer elements moved than gathering their weights); DeepSpeed gathers them in longer ones",
        len(layers),
        f"{limits[0]}-{limits[-1]}" if len(limits) > 1 else limits[0],
    )
    return FrozenLinears(layers)
