"""The structural-embedding path (head -> LayerNorm -> softmax -> VTE) computed lean.

At the paper's scale this path is large: a head of ``D x (V - 2)`` (1024 x 131070), a softmax over
131070 visual words for each of the 576 patches of an image, and a visual embedding table (VTE) of
``V x H`` (131072 x 4096). Written the obvious way, autograd keeps the head's logits and the
probabilities, two ``[rows, V]`` float tensors (0.6 GB per image in float32), for the backward
pass, and inference holds two of them at once.

:func:`fused_visual_embed` computes the same embeddings chunk by chunk (a chunk is a block of patch
rows whose ``[rows, V]`` tensors stay within a fixed byte budget: 1024 rows at V = 131072), as one
autograd function that saves only its input features and three numbers per row (the LayerNorm
mean and inverse std and the softmax's log-normaliser), and recomputes each chunk's logits and
probabilities in the backward pass. It returns gradients for the features, the head weight, the
LayerNorm weight and bias and the VTE weight, equal to the naive ones to floating-point rounding.
The extra work is one ``rows x D x V`` product in the backward pass (the logits recomputed):
about 7% of the path's forward + backward FLOPs at the paper's widths. When it costs at most a
fifth of the naive path's saved activations, the last chunk's normalised logits are kept from the
forward pass instead (at batch 4 in float32: a third of the rows, 17% of naive), which removes a
third of that recomputation without raising the backward pass's peak. Each chunk is worked on
word-major (``[V, rows]``) in buffers reused from chunk to chunk, which on the CPU makes the two
products with a transposed operand (``X W^T``, ``G E^T``) run ~25% faster and avoids paying page
faults for fresh ``[rows, V]`` tensors.

:func:`topk_visual_embed` is an optional, approximate inference mode: it keeps the ``k`` most
probable visual words of each patch, renormalises their probabilities and sums the ``k`` VTE rows
(an embedding bag) instead of multiplying a dense ``[rows, V]`` matrix by the whole table.
The dense path stays the default and the exact reference.

:func:`naive_visual_embed` is the reference: the model's original code path, as one function.

All three take the head's input as it is: with ``hidden_stride`` s > 1 that is the merged features
``[B, N / s^2, s^2 D]`` (``ovis.model.visual_tokenizer.merge_patches``) and a head of width ``s^2 D``;
the merge is a reshape, so autograd carries the features' gradient back through it. In the tiled
layout the table's last five rows are indicators filled outside these functions
(``indicator_rows=5``, ``use_indicators=False``): their gradient here is zero.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

#: Bytes that one ``[rows, V]`` float32 buffer of a chunk may take (the forward pass holds two, the
#: backward pass three). 512 MiB is 1024 rows at V = 131072: batch 4 (2304 rows) in three chunks.
CHUNK_BUDGET_BYTES = 512 * 2**20

#: Chunk buffers are word-major (``[V, rows]``) with their row length padded to a multiple of this:
#: MKL's GEMMs into them run at full rate then, not ~10% slower for odd widths.
_ALIGN = 64


def chunk_rows_for(words: int, budget_bytes: int = CHUNK_BUDGET_BYTES) -> int:
    """Rows per chunk such that a ``[rows, words]`` float32 tensor fits in ``budget_bytes``."""
    return max(1, budget_bytes // (4 * max(1, words)))


def _chunks(total: int, rows: int) -> list[tuple[int, int]]:
    """Split ``total`` rows into near-equal chunks of at most ``rows`` rows: ``[(start, end), ...]``."""
    if total == 0:
        return []
    count = math.ceil(total / max(1, rows))
    size = math.ceil(total / count)
    return [(start, min(start + size, total)) for start in range(0, total, size)]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Element-wise work (LayerNorm, softmax and their gradients) runs in float32 at least."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _matmul_into(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out = a @ b`` without a fresh ``[rows, V]`` allocation when the dtypes allow it."""
    if out.dtype == a.dtype:
        return torch.matmul(a, b, out=out)
    return out.copy_(torch.matmul(a, b))


def _buffers(count: int, words: int, rows: int, like: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor]:
    """``count`` word-major ``[words, rows]`` work buffers (row length padded, see ``_ALIGN``)."""
    width = -(-rows // _ALIGN) * _ALIGN
    return [like.new_empty(words, width, dtype=dtype) for _ in range(count)]


def _normalise_(z: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """LayerNorm's normalisation in place (``z`` becomes ``(z - mean) * rstd``); returns mean, rstd.

    In-place passes over a reused buffer: on the CPU, ``F.layer_norm`` on rows of 131k words is
    several times slower than these, and every fresh ``[rows, V]`` tensor pays its page faults.
    """
    mean = z.mean(dim=-1, keepdim=True)
    z.sub_(mean)
    rstd = torch.linalg.vector_norm(z, dim=-1, keepdim=True).square_().div_(z.shape[-1]).add_(eps).rsqrt_()
    z.mul_(rstd)
    return mean, rstd


def _normalise_columns_(z: torch.Tensor, scratch: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_normalise_` for word-major ``[V, rows]`` logits (statistics over dim 0), in place."""
    mean = z.mean(dim=0, keepdim=True)
    z.sub_(mean)
    rstd = torch.mul(z, z, out=scratch).mean(dim=0, keepdim=True).add_(eps).rsqrt_()
    z.mul_(rstd)
    return mean, rstd


def _softmax_columns_(y: torch.Tensor) -> torch.Tensor:
    """Softmax over dim 0 of word-major ``[V, rows]`` logits, in place; returns the log-normalisers.

    (``torch.softmax(dim=0)`` into a strided buffer is several times slower on the CPU.)
    """
    top = y.amax(dim=0, keepdim=True)
    total = y.sub_(top).exp_().sum(dim=0, keepdim=True)
    y.div_(total)
    return total.log_().add_(top)


def _wrap(body: torch.Tensor, vte_weight: torch.Tensor, use_indicators: bool) -> torch.Tensor:
    """``[B, N, H]`` -> ``[B, N + 2, H]`` with the begin/end indicator rows (``V - 2``, ``V - 1``)."""
    if not use_indicators:
        return body
    batch = body.shape[0]
    return torch.cat([vte_weight[-2].expand(batch, 1, -1), body, vte_weight[-1].expand(batch, 1, -1)], dim=1)


# -- the reference -------------------------------------------------------------------------------------
def naive_visual_embed(
    features: torch.Tensor,
    head_weight: torch.Tensor,
    ln_weight: torch.Tensor,
    ln_bias: torch.Tensor,
    vte_weight: torch.Tensor,
    *,
    eps: float = 1e-5,
    use_indicators: bool = True,
    indicator_rows: int | None = None,
) -> torch.Tensor:
    """``[B, N, D]`` features -> ``[B, N (+2), H]`` embeddings, every intermediate materialised.

    Exactly the ``VisualTokenizer`` (softmax) + ``VisualEmbedding.embed_distributions`` code path.
    """
    _check_shapes(features, head_weight, vte_weight, use_indicators, indicator_rows)
    words = head_weight.shape[0]
    logits = F.layer_norm(F.linear(features, head_weight), (words,), ln_weight, ln_bias, eps)
    probs = logits.softmax(dim=-1)
    body = torch.matmul(probs.to(vte_weight.dtype), vte_weight[:words])
    return _wrap(body, vte_weight, use_indicators)


# -- the fused, chunked dense path -------------------------------------------------------------------
class _FusedVisualEmbed(torch.autograd.Function):
    """``[B, N, D]`` -> ``[B, N (+2), H]``; saves the features, three ``[B * N]`` statistics and
    at most the last chunk's normalised logits.

    Each chunk's ``[V, rows]`` work happens in a few word-major buffers allocated once per call
    (word-major: on the CPU, ``W @ X^T`` and ``E @ G^T`` run ~25% faster than ``X @ W^T`` and
    ``G @ E^T`` at these shapes). The indicator rows are written, and their gradient accumulated,
    here too, so the table's gradient is one ``[V, H]`` tensor rather than several added up.
    """

    @staticmethod
    def forward(ctx, features, head_weight, ln_weight, ln_bias, vte_weight, eps, chunk_rows, use_indicators, may_keep):
        batch, patches, width = features.shape
        words = head_weight.shape[0]
        x = features.reshape(batch * patches, width)
        acc = _compute_dtype(x.dtype)
        table = vte_weight[:words]
        chunks = _chunks(x.shape[0], chunk_rows)
        body = x.new_empty(x.shape[0], vte_weight.shape[1], dtype=vte_weight.dtype)
        stats = x.new_empty(3, 1, x.shape[0], dtype=acc)  # LayerNorm mean, rstd; softmax log-normaliser
        ln_w, ln_b = ln_weight.to(acc)[:, None], ln_bias.to(acc)[:, None]
        size = max((end - start for start, end in chunks), default=0)
        zbuf, pbuf = _buffers(2, words, size, x, acc)
        (tbuf,) = _buffers(1, vte_weight.shape[1], size, x, vte_weight.dtype)
        for start, end in chunks:
            z, probs = zbuf[:, : end - start], pbuf[:, : end - start]
            _matmul_into(head_weight, x[start:end].t(), z)
            stats[0, :, start:end], stats[1, :, start:end] = _normalise_columns_(z, probs, eps)
            torch.addcmul(ln_b, z, ln_w, out=probs)
            stats[2, :, start:end] = _softmax_columns_(probs)
            # E^T P (then transposed, [H, rows] is small) runs a few % faster than P^T E here.
            body[start:end] = torch.matmul(table.t(), probs.to(table.dtype), out=tbuf[:, : end - start]).t()
        # The last chunk's normalised logits (still in ``zbuf``) are kept when that costs at most a
        # fifth of what the naive path saves (its logits and probabilities, in the input dtype), so
        # that with the features everything saved stays under a quarter of naive: the backward pass
        # starts with that chunk and skips its recomputation, and reuses the buffer for the other
        # chunks, so its peak does not grow. In float32 at the paper's scale that is batch 4 (three
        # chunks, one kept: 1/6 of naive); one chunk, or bf16 inputs in three, keep nothing.
        naive_bytes = 2 * x.shape[0] * words * x.element_size()
        keep = (
            may_keep
            and len(chunks) >= 2
            and 5 * zbuf.numel() * zbuf.element_size() <= naive_bytes
            and any(ctx.needs_input_grad[:5])
        )
        kept = zbuf if keep else None
        del zbuf, pbuf, tbuf
        ctx.save_for_backward(x, head_weight, ln_weight, ln_bias, vte_weight, stats, kept)
        ctx.kept_valid = keep
        ctx.eps, ctx.chunk_rows, ctx.use_indicators = eps, chunk_rows, use_indicators
        ctx.features_shape = features.shape
        return _wrap(body.view(batch, patches, body.shape[-1]), vte_weight, use_indicators)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, head_weight, ln_weight, ln_bias, vte_weight, stats, kept = ctx.saved_tensors
        need_x, need_head, need_lnw, need_lnb, need_vte = ctx.needs_input_grad[:5]
        words = head_weight.shape[0]
        acc = stats.dtype
        table = vte_weight[:words]
        ln_w, ln_b = ln_weight.to(acc)[:, None], ln_bias.to(acc)[:, None]
        chunks = _chunks(x.shape[0], ctx.chunk_rows)
        new = torch.empty_like if chunks else torch.zeros_like  # the first chunk writes (beta = 0)
        grad_vte = new(vte_weight) if need_vte else None
        if need_vte:
            grad_vte[words:] = 0  # indicator rows: only the wrapped begin/end get a gradient here
        if ctx.use_indicators:
            if need_vte:
                grad_vte[-2] = grad_out[:, 0].sum(dim=0)
                grad_vte[-1] = grad_out[:, -1].sum(dim=0)
            grad_out = grad_out[:, 1:-1]
        grad_out = grad_out.reshape(x.shape[0], grad_out.shape[-1]).to(table.dtype)
        need_logits = need_x or need_head or need_lnw or need_lnb
        grad_x = torch.empty_like(x) if need_x else None
        grad_head = new(head_weight) if need_head else None
        grad_lnw = torch.zeros_like(ln_weight, dtype=acc) if need_lnw else None
        grad_lnb = torch.zeros_like(ln_bias, dtype=acc) if need_lnb else None
        size = max((end - start for start, end in chunks), default=0)
        # The kept last chunk goes first; its buffer then serves the other chunks. It is
        # overwritten, so a second backward through a retained graph recomputes every chunk; and it
        # is written through ``.data`` so that autograd's version check of saved tensors, which
        # would refuse that second backward, does not see the writes.
        use_kept = kept is not None and ctx.kept_valid
        ctx.kept_valid = False
        if use_kept:
            chunks = chunks[-1:] + chunks[:-1]
        zbuf = kept.data if kept is not None else _buffers(1, words, size, x, acc)[0]
        pbuf, gbuf = _buffers(2 if need_logits else 1, words, size, x, acc) + ([] if need_logits else [None])
        for index, (start, end) in enumerate(chunks):
            xc, go, n = x[start:end], grad_out[start:end], end - start
            mean, rstd, lse = stats[:, :, start:end]
            beta = 0 if index == 0 else 1
            # Recompute the chunk (word-major): normalised logits, kept for the LayerNorm gradient,
            # and probabilities.
            zhat, probs = zbuf[:, :n], pbuf[:, :n]
            if not (use_kept and index == 0):
                _matmul_into(head_weight, xc.t(), zhat).sub_(mean).mul_(rstd)
            torch.addcmul(ln_b, zhat, ln_w, out=probs).sub_(lse).exp_()
            if need_vte:  # dE[:V'] += P^T dOut
                grad_vte[:words].addmm_(probs.to(table.dtype), go, beta=beta)
            if not need_logits:
                continue
            # Softmax backward: dY = P * dP - P * sum(P * dP), dP = dOut E^T.
            grad_y = _matmul_into(table, go.t(), gbuf[:, :n]).mul_(probs)
            grad_y.addcmul_(probs, grad_y.sum(dim=0, keepdim=True), value=-1)
            scratch = probs  # the probabilities are not needed any more
            if need_lnw:
                grad_lnw += torch.mul(grad_y, zhat, out=scratch).sum(dim=1)
            if need_lnb:
                grad_lnb += grad_y.sum(dim=1)
            if not (need_x or need_head):
                continue
            # LayerNorm backward: dZ = rstd * (dZhat - mean(dZhat) - Zhat * mean(dZhat * Zhat)).
            grad_z = grad_y.mul_(ln_w)
            m1 = grad_z.mean(dim=0, keepdim=True)
            m2 = torch.mul(grad_z, zhat, out=scratch).mean(dim=0, keepdim=True)
            grad_z = grad_z.sub_(m1).addcmul_(zhat, m2, value=-1).mul_(rstd).to(head_weight.dtype)
            if need_x:
                torch.matmul(grad_z.t(), head_weight, out=grad_x[start:end])
            if need_head:
                grad_head.addmm_(grad_z, xc, beta=beta)
        grad_x = grad_x.view(ctx.features_shape) if grad_x is not None else None
        grad_lnw = grad_lnw.to(ln_weight.dtype) if grad_lnw is not None else None
        grad_lnb = grad_lnb.to(ln_bias.dtype) if grad_lnb is not None else None
        return grad_x, grad_head, grad_lnw, grad_lnb, grad_vte, None, None, None, None


def fused_visual_embed(
    features: torch.Tensor,
    head_weight: torch.Tensor,
    ln_weight: torch.Tensor,
    ln_bias: torch.Tensor,
    vte_weight: torch.Tensor,
    *,
    eps: float = 1e-5,
    use_indicators: bool = True,
    chunk_rows: int | None = None,
    indicator_rows: int | None = None,
) -> torch.Tensor:
    """``[B, N, D]`` features -> ``[B, N (+2), H]``: the same as :func:`naive_visual_embed`, lean.

    ``head_weight`` is ``[V', D]`` (``V' = V - I``, ``I`` = ``indicator_rows``: by default 2 with
    ``use_indicators``, which wraps each block in the table's last two rows, else 0), ``ln_weight`` /
    ``ln_bias`` are ``[V']`` and ``vte_weight`` is ``[V, H]``. ``chunk_rows`` is the number of patch
    rows per chunk (default: :func:`chunk_rows_for`). Under ``torch.no_grad`` nothing is saved.
    """
    words = head_weight.shape[0]
    _check_shapes(features, head_weight, vte_weight, use_indicators, indicator_rows)
    rows = chunk_rows or chunk_rows_for(words)
    features = features.to(head_weight.dtype)
    # Under no_grad there is no backward pass to keep anything for.
    may_keep = torch.is_grad_enabled()
    return _FusedVisualEmbed.apply(
        features, head_weight, ln_weight, ln_bias, vte_weight, eps, rows, use_indicators, may_keep
    )


def _check_shapes(features, head_weight, vte_weight, use_indicators, indicator_rows=None) -> None:
    words, width = head_weight.shape
    if features.dim() != 3 or features.shape[-1] != width:
        raise ValueError(f"features must be [B, N, {width}], got {list(features.shape)}")
    extra = (2 if use_indicators else 0) if indicator_rows is None else indicator_rows
    if use_indicators and extra != 2:
        raise ValueError(f"wrapping in begin/end indicators needs 2 indicator rows, got {extra}")
    if vte_weight.shape[0] != words + extra:
        raise ValueError(f"the VTE has {vte_weight.shape[0]} rows for a head of {words} words and {extra} indicators")


# -- approximate top-k inference ---------------------------------------------------------------------
@torch.no_grad()
def topk_visual_embed(
    features: torch.Tensor,
    head_weight: torch.Tensor,
    ln_weight: torch.Tensor,
    ln_bias: torch.Tensor,
    vte_weight: torch.Tensor,
    k: int,
    *,
    eps: float = 1e-5,
    use_indicators: bool = True,
    chunk_rows: int | None = None,
    indicator_rows: int | None = None,
) -> torch.Tensor:
    """Inference only: each patch's embedding from its ``k`` most probable visual words.

    The kept probabilities are renormalised to sum to one and the ``k`` VTE rows are summed with
    those weights (``F.embedding_bag``), so no ``[rows, V]`` probability matrix is multiplied by the
    table. ``k >= V'`` gives the dense result (up to summation order).
    """
    if k < 1:
        raise ValueError(f"top-k needs k >= 1, got {k}")
    _check_shapes(features, head_weight, vte_weight, use_indicators, indicator_rows)
    batch, patches, width = features.shape
    words = head_weight.shape[0]
    k = min(k, words)
    rows = chunk_rows or chunk_rows_for(words)
    acc = _compute_dtype(features.dtype)
    ln_w, ln_b = ln_weight.to(acc), ln_bias.to(acc)
    x = features.reshape(batch * patches, width).to(head_weight.dtype)
    table = vte_weight[:words]
    body = x.new_empty(x.shape[0], vte_weight.shape[1], dtype=vte_weight.dtype)
    chunks = _chunks(x.shape[0], rows)
    size = max((end - start for start, end in chunks), default=0)
    (zbuf,) = _buffers(1, words, size, x, acc)
    ybuf = x.new_empty(size, words, dtype=acc)
    for start, end in chunks:
        # Logits word-major (the faster GEMM), then row-major for a fast top-k along the rows.
        z, y = zbuf[:, : end - start], ybuf[: end - start]
        y.copy_(_matmul_into(head_weight, x[start:end].t(), z).t())
        _normalise_(y, eps)
        top, idx = y.mul_(ln_w).add_(ln_b).topk(k, dim=-1, sorted=False)
        weights = top.softmax(dim=-1).to(table.dtype)
        body[start:end] = F.embedding_bag(idx, table, per_sample_weights=weights, mode="sum")
    return _wrap(body.view(batch, patches, body.shape[-1]), vte_weight, use_indicators)
