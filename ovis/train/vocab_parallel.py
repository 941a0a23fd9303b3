"""The token embedding's lookup and the LM head's loss over each rank's own rows, under ZeRO-3.

DeepSpeed gathers a whole parameter before its module runs, and the ``[vocab, hidden]`` matrix of
the token embedding and the LM head (often one tied matrix) is the largest there is: 311M parameters
of a 1B model with Qwen's 152K words. Gathered whole, it sets every rank's peak at its own partition
plus the whole matrix, however many ranks share the model (``benchmarks/load_memory.py``).

A ZeRO-3 partition is a contiguous piece of the flattened matrix, so a rank holds a run of whole
rows (plus at most a row split with the next rank, completed here from the next rank's first
elements). The ranks therefore trade tokens instead of the matrix, in chunks of tokens:

* lookup: every rank fills in the rows it holds for every rank's token ids; a sum over the ranks
  (``reduce_scatter``) hands each rank its own tokens' embeddings, equal to the bit to the lookup;
* loss: every rank scores every rank's hidden states against its rows and reduces them to one
  log-sum-exp per token; the ranks' log-sum-exps and target logits combine into each token's
  cross-entropy. The backward pass scores the chunk again (no ``[tokens, vocab]`` logits kept) and
  sums the ranks' gradients of the hidden states the same way.

Only ``[tokens, hidden]`` activations travel. It is used when the matrix does not train (stages 1 and
2, where the LLM is frozen; LoRA leaves it frozen too): a trained matrix needs its gradient in
DeepSpeed's partitioned buffers, which this does not write, so it is gathered as before.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

logger = logging.getLogger("ovis.train")

#: A chunk's float32 scores (tokens of every rank x this rank's rows) stay under this many elements
#: (16 MiB: with its bf16 form and the log-sum-exp's temporary, under 1% of a 1B model's bf16 copy).
CHUNK_ELEMENTS = 2**22
#: A chunk has at least this many tokens per rank (a huge vocabulary would otherwise cut it to a few).
MIN_CHUNK_TOKENS = 16

_GROUPS: dict[tuple[int, ...], Any] = {}
# torch 2.14 renamed the tensor collectives (the old names warn); older torch has only the old ones.
all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


@dataclass(frozen=True)
class RowShard:
    """This rank's rows ``first .. first + count`` of a partitioned ``[vocab, hidden]`` matrix: ``full``
    (a view of the partition) and ``last`` (a ``[1, hidden]`` row completed from the next rank, or None)."""

    first: int
    full: torch.Tensor
    last: torch.Tensor | None
    vocab: int
    hidden: int

    @property
    def count(self) -> int:
        return self.full.shape[0] + (0 if self.last is None else 1)

    def owns(self, ids: torch.Tensor) -> torch.Tensor:
        return (ids >= self.first) & (ids < self.first + self.count)

    def take(self, local: torch.Tensor) -> torch.Tensor:
        """The rows at ``local`` (indices from ``first``)."""
        if self.last is None:
            return self.full[local]
        # (not torch.cat([full, last])[local]: that would copy all of this rank's rows)
        in_full = local < self.full.shape[0]
        rows = self.last.expand(local.numel(), -1).clone()
        rows[in_full] = self.full[local[in_full]]
        return rows

    def scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden @ rows.T`` in the matrix's dtype, as the LM head computes it."""
        out = hidden @ self.full.T
        return out if self.last is None else torch.cat([out, hidden @ self.last.T], dim=1)

    def backward(self, grad_scores: torch.Tensor) -> torch.Tensor:
        """The gradient of :meth:`scores`' input."""
        n = self.full.shape[0]
        grad = grad_scores[:, :n] @ self.full
        return grad if self.last is None else grad + grad_scores[:, n:] @ self.last


@dataclass(frozen=True)
class RowRange:
    """Where a rank's partition lies in a ``[rows, hidden]`` matrix flattened: elements ``start .. stop``;
    the rows it uses are ``first .. first + count`` (a row is used by the rank where it starts, and
    completed from the next rank's first ``hidden - split`` elements when it runs past ``stop``)."""

    start: int
    stop: int
    first: int
    whole: int
    split: int  # elements of a row started here that run into the next partition (0: none)
    hidden: int

    @property
    def count(self) -> int:
        return self.whole + (1 if self.split else 0)

    @property
    def head(self) -> int:
        """The elements before this partition's first row: the previous rank's split row ends there."""
        return min(self.first * self.hidden, self.stop) - self.start


def row_range(weight: nn.Parameter, rank: int) -> RowRange:
    """``rank``'s :class:`RowRange` of the ZeRO-3-partitioned matrix ``weight`` (every rank's
    partition has ``ds_tensor``'s size; computed locally, for any rank)."""
    hidden = int(weight.ds_shape[1])
    size, numel = weight.ds_tensor.numel(), int(weight.ds_numel)
    start = min(rank * size, numel)
    stop = min(start + size, numel)
    first = -(-start // hidden)
    whole = max(0, stop - first * hidden) // hidden
    split = max(0, stop - (first + whole) * hidden)
    return RowRange(start=start, stop=stop, first=first, whole=whole, split=split, hidden=hidden)


def head_fragment(weight: nn.Parameter, rank: int) -> torch.Tensor:
    """``[hidden]``: the elements of this rank's partition before its first row (zeros after them): what
    completes the previous rank's split row."""
    part = weight.ds_tensor.view(-1)
    head = row_range(weight, rank).head
    fragment = torch.zeros(int(weight.ds_shape[1]), dtype=part.dtype, device=part.device)
    fragment[:head] = part[:head]
    return fragment


def shard_from(weight: nn.Parameter, rank: int, next_fragment: torch.Tensor | None) -> RowShard:
    """This rank's :class:`RowShard`, its split row (if any) completed from ``next_fragment`` (the next
    rank's :func:`head_fragment`)."""
    vocab, hidden = (int(n) for n in weight.ds_shape)
    part = weight.ds_tensor.view(-1)
    where = row_range(weight, rank)
    offset = where.first * hidden - where.start
    full = part[offset : offset + where.whole * hidden].view(where.whole, hidden)
    last = None
    if where.split:  # a row that runs into the next rank's partition
        own = part[offset + where.whole * hidden : where.stop - where.start]
        last = torch.cat([own, next_fragment[: hidden - own.numel()]]).view(1, hidden)
    return RowShard(first=where.first, full=full, last=last, vocab=vocab, hidden=hidden)


def row_shard(weight: nn.Parameter, group: Any) -> RowShard:
    """This rank's rows of the ZeRO-3-partitioned matrix ``weight`` (every rank of ``group`` calls)."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    fragment = head_fragment(weight, rank)
    fragments = torch.empty(world * fragment.numel(), dtype=fragment.dtype, device=fragment.device)
    all_gather_single(fragments, fragment, group=group)
    following = fragments.view(world, -1)[rank + 1] if rank + 1 < world else None
    return shard_from(weight, rank, following)


class VocabParallel:
    """The lookup and the loss over ``weight``'s partitions; see the module's docstring."""

    def __init__(self, weight: nn.Parameter, group: Any) -> None:
        self.weight = weight
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

    def chunk_tokens(self) -> int:
        vocab = int(self.weight.ds_shape[0])
        return max(MIN_CHUNK_TOKENS, CHUNK_ELEMENTS // max(1, vocab))

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """``embedding(ids)`` (no gradient: the matrix is frozen)."""
        shard = row_shard(self.weight, self.group)
        flat = ids.reshape(-1)
        outside = flat[(flat < 0) | (flat >= shard.vocab)]
        # Every rank learns of a bad id (raising on one rank alone would leave the others waiting).
        longest, bad = self._longest(flat.numel(), int(outside[0]) if outside.numel() else None)
        if bad is not None:
            raise IndexError(f"token id {bad[1]} (rank {bad[0]}'s batch) outside the embedding's {shard.vocab} rows")
        out = torch.empty(flat.numel(), shard.hidden, dtype=shard.full.dtype, device=shard.full.device)
        chunk = self.chunk_tokens()
        for begin in range(0, longest, chunk):
            gathered = self._gather(flat[begin : begin + chunk], chunk, fill=-1)
            rows = torch.zeros(gathered.numel(), shard.hidden, dtype=out.dtype, device=out.device)
            mine = shard.owns(gathered)
            rows[mine] = shard.take(gathered[mine] - shard.first)
            summed = self._sum_scatter(rows, chunk)
            n = max(0, min(chunk, flat.numel() - begin))
            out[begin : begin + n] = summed[:n]
        return out.view(*ids.shape, shard.hidden)

    def losses(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The cross-entropy (float32) of each row of ``hidden`` ``[tokens, hidden]`` against ``targets``
        ``[tokens]``, scored by the LM head ``weight`` (``hidden @ weight.T``)."""
        return _Loss.apply(hidden, targets, self)

    # -- collectives (every rank calls each, in the same order) -------------------------------
    def _longest(self, n: int, bad: int | None = None) -> tuple[int, tuple[int, int] | None]:
        """The most tokens any rank has, and the first rank's bad token id if one has (rank, id)."""
        device = self.weight.ds_tensor.device
        mine = torch.tensor([n, 0 if bad is None else 1, bad or 0], dtype=torch.long, device=device)
        counts = torch.empty(3 * self.world, dtype=torch.long, device=device)
        all_gather_single(counts, mine, group=self.group)
        rows = counts.view(self.world, 3).tolist()
        flagged = next(((rank, row[2]) for rank, row in enumerate(rows) if row[1] > 0), None)
        return max(row[0] for row in rows), flagged

    def _gather(self, piece: torch.Tensor, chunk: int, fill: float = 0) -> torch.Tensor:
        return gather_padded(piece, chunk, self.world, self.group, fill)

    def _sum_scatter(self, rows: torch.Tensor, chunk: int) -> torch.Tensor:
        """The sum over the ranks of ``rows`` ``[world * chunk, ...]``, this rank's ``chunk`` of it."""
        out = torch.empty((chunk, *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
        reduce_scatter_single(out, rows.contiguous(), group=self.group)
        return out


def gather_padded(piece: torch.Tensor, chunk: int, world: int, group: Any, fill: float = 0) -> torch.Tensor:
    """Every rank's ``piece`` padded with ``fill`` to ``chunk`` rows: ``[world * chunk, ...]``."""
    padded = torch.full((chunk, *piece.shape[1:]), fill, dtype=piece.dtype, device=piece.device)
    padded[: piece.shape[0]] = piece
    out = torch.empty((world * chunk, *piece.shape[1:]), dtype=piece.dtype, device=piece.device)
    all_gather_single(out, padded, group=group)
    return out


def most_over_ranks(n: int, world: int, group: Any, device: torch.device) -> int:
    """The largest ``n`` any rank of ``group`` passes (every rank calls)."""
    mine = torch.tensor([n], dtype=torch.long, device=device)
    every = torch.empty(world, dtype=torch.long, device=device)
    all_gather_single(every, mine, group=group)
    return int(every.max())


class _Loss(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, targets: torch.Tensor, vp: VocabParallel) -> torch.Tensor:
        shard = row_shard(vp.weight, vp.group)
        chunk, n = vp.chunk_tokens(), hidden.shape[0]
        losses = torch.empty(n, dtype=torch.float32, device=hidden.device)
        saved: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        longest, _ = vp._longest(n)
        for begin in range(0, longest, chunk):
            h = vp._gather(hidden[begin : begin + chunk].detach(), chunk)
            t = vp._gather(targets[begin : begin + chunk], chunk, fill=-1)
            scores = shard.scores(h.to(shard.full.dtype)).float()
            rows = torch.nonzero(shard.owns(t)).squeeze(1)  # the tokens whose target is a row of this rank
            target_score = torch.zeros(t.numel(), dtype=torch.float32, device=hidden.device)
            target_score[rows] = scores[rows, t[rows] - shard.first]
            part_lse = torch.logsumexp(scores, dim=1)  # -inf where this rank holds no row
            every = torch.empty(vp.world * part_lse.numel(), dtype=torch.float32, device=hidden.device)
            all_gather_single(every, part_lse.contiguous(), group=vp.group)
            lse = torch.logsumexp(every.view(vp.world, -1), dim=0)
            dist.all_reduce(target_score, group=vp.group)
            m = max(0, min(chunk, n - begin))
            own = slice(vp.rank * chunk, vp.rank * chunk + m)
            losses[begin : begin + m] = lse[own] - target_score[own]
            saved.append((rows, t[rows] - shard.first, lse))
        ctx.vp, ctx.chunk, ctx.saved = vp, chunk, saved
        ctx.save_for_backward(hidden)
        return losses

    @staticmethod
    def backward(ctx: Any, grad_losses: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (hidden,) = ctx.saved_tensors
        vp, chunk = ctx.vp, ctx.chunk
        shard = row_shard(vp.weight, vp.group)
        grad_hidden = torch.empty_like(hidden)
        n = hidden.shape[0]
        for index, (rows, columns, lse) in enumerate(ctx.saved):
            begin = index * chunk
            h = vp._gather(hidden[begin : begin + chunk], chunk)
            g = vp._gather(grad_losses[begin : begin + chunk].float(), chunk)
            probs = shard.scores(h.to(shard.full.dtype)).float()
            probs.sub_(lse.unsqueeze(1)).exp_()  # softmax, in place: one float32 chunk at a time
            probs[rows, columns] -= 1.0
            probs.mul_(g.unsqueeze(1))
            summed = vp._sum_scatter(shard.backward(probs.to(shard.full.dtype)).to(hidden.dtype), chunk)
            m = max(0, min(chunk, n - begin))
            grad_hidden[begin : begin + m] = summed[:m]
        return grad_hidden, None, None


def group_of(weight: nn.Parameter) -> Any:
    """A process group of ``weight``'s ranks for these collectives alone (so they never interleave
    with DeepSpeed's own on its group); made once per set of ranks, by every rank."""
    base = getattr(weight, "ds_process_group", None)
    ranks = tuple(dist.get_process_group_ranks(base)) if base is not None else tuple(range(dist.get_world_size()))
    if ranks not in _GROUPS:
        _GROUPS[ranks] = dist.new_group(list(ranks))
    return _GROUPS[ranks]


def usable(weight: Any, device: torch.device) -> bool:
    """A frozen ZeRO-3 matrix whose partition is a plain resident tensor on ``device``'s kind, over
    more than one rank."""
    part = getattr(weight, "ds_tensor", None)
    shape = getattr(weight, "ds_shape", None)
    if part is None or shape is None or len(shape) != 2 or weight.requires_grad:
        return False
    from deepspeed.runtime.zero.partition_parameters import OffloadDeviceEnum

    if getattr(part, "final_location", None) == OffloadDeviceEnum.nvme or hasattr(part, "ds_quant_scale"):
        return False  # on NVMe, or quantized: not the rows themselves
    if part.device.type != device.type:
        return False
    return dist.is_initialized() and dist.get_world_size(getattr(weight, "ds_process_group", None)) > 1


def plan(
    lm: nn.Module, device: torch.device, *, head: bool = True
) -> tuple[VocabParallel | None, VocabParallel | None]:
    """``(lookup, head)``: :class:`VocabParallel` for the causal LM ``lm``'s token embedding and (if
    ``head``) LM head where they are frozen ZeRO-3 partitions on ``device`` over more than one rank
    (None where DeepSpeed gathers them as usual). Every rank calls it, at the same point."""
    embedding, linear = lm.get_input_embeddings(), lm.get_output_embeddings() if head else None
    lookup = vp_head = None
    if type(embedding) is nn.Embedding and embedding.max_norm is None and usable(embedding.weight, device):
        lookup = VocabParallel(embedding.weight, group_of(embedding.weight))
    if type(linear) is nn.Linear and linear.bias is None and usable(linear.weight, device):
        vp_head = VocabParallel(linear.weight, group_of(linear.weight))
    if lookup or vp_head:
        logger.info(
            "ZeRO-3: %s over each rank's own vocabulary rows (not gathered whole)",
            " and ".join(w for w, v in (("token lookup", lookup), ("LM head loss", vp_head)) if v),
        )
    return lookup, vp_head
