"""The lean visual path (``ovis.model.visual_path``): fused = naive in value and gradient, memory, top-k."""

from __future__ import annotations

import itertools

import pytest
import torch

from ovis.model import OvisConfig
from ovis.model.visual_path import (
    _chunks,
    chunk_rows_for,
    fused_visual_embed,
    naive_visual_embed,
    topk_visual_embed,
)
from ovis.profiling import saved_activation_bytes


def _weights(batch=3, patches=7, width=16, vocab=50, hidden=12, dtype=torch.float64, indicators=True, seed=0):
    """Features and the path's parameters, all requiring gradients."""
    gen = torch.Generator().manual_seed(seed)
    words = vocab - (2 if indicators else 0)
    tensors = [
        torch.randn(batch, patches, width, generator=gen),
        torch.randn(words, width, generator=gen) / width**0.5,
        1 + 0.2 * torch.randn(words, generator=gen),
        0.2 * torch.randn(words, generator=gen),
        torch.randn(vocab, hidden, generator=gen),
    ]
    return [t.to(dtype).requires_grad_() for t in tensors]


def _copy(tensors):
    return [t.detach().clone().requires_grad_(t.requires_grad) for t in tensors]


def _run(fn, tensors, grad_out, **kwargs):
    out = fn(*tensors, **kwargs)
    out.backward(grad_out)
    return out.detach(), [t.grad for t in tensors]


@pytest.mark.parametrize("indicators", [True, False])
@pytest.mark.parametrize("chunk_rows", [1, 4, 5, 21, 1000])
def test_fused_equals_naive_in_value_and_gradient_float64(indicators, chunk_rows):
    """Chunk sizes that divide the 21 rows, that do not, one row and one chunk for everything."""
    tensors = _weights(indicators=indicators)
    grad_out = torch.randn(3, 7 + (2 if indicators else 0), 12, dtype=torch.float64)
    ref, ref_grads = _run(naive_visual_embed, _copy(tensors), grad_out, use_indicators=indicators)
    out, grads = _run(fused_visual_embed, _copy(tensors), grad_out, use_indicators=indicators, chunk_rows=chunk_rows)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for name, got, want in zip(["features", "head", "ln weight", "ln bias", "vte"], grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=name)


def test_fused_gradients_match_naive_to_float32_precision():
    """float32 at a wider vocabulary: both paths agree to float32 rounding (relative 1e-5)."""
    tensors = _weights(batch=2, patches=9, width=32, vocab=1000, hidden=24, dtype=torch.float32, seed=1)
    grad_out = torch.randn(2, 11, 24)
    ref, ref_grads = _run(naive_visual_embed, _copy(tensors), grad_out)
    out, grads = _run(fused_visual_embed, _copy(tensors), grad_out, chunk_rows=7)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def test_gradcheck_float64():
    tensors = _weights(batch=2, patches=3, width=5, vocab=9, hidden=4)
    assert torch.autograd.gradcheck(lambda *t: fused_visual_embed(*t, chunk_rows=4), _copy(tensors))


def test_frozen_parts_get_no_gradient_and_the_rest_is_unchanged():
    """Frozen head / features (stages that train only the VTE): only what needs a gradient gets one."""
    tensors = _weights()
    grad_out = torch.randn(3, 9, 12, dtype=torch.float64)
    _, ref_grads = _run(naive_visual_embed, _copy(tensors), grad_out)
    frozen = _copy(tensors)
    for t in frozen[:4]:
        t.requires_grad_(False)
    _, grads = _run(fused_visual_embed, frozen, grad_out, chunk_rows=5)
    assert grads[:4] == [None] * 4
    torch.testing.assert_close(grads[4], ref_grads[4])
    vte_frozen = _copy(tensors)
    vte_frozen[4].requires_grad_(False)
    _, grads = _run(fused_visual_embed, vte_frozen, grad_out, chunk_rows=5)
    assert grads[4] is None
    for got, want in zip(grads[:4], ref_grads[:4], strict=True):
        torch.testing.assert_close(got, want)


def test_no_grad_path_matches_and_keeps_nothing():
    tensors = _weights()
    ref = naive_visual_embed(*tensors)
    with torch.no_grad():
        out = fused_visual_embed(*tensors, chunk_rows=2)
    assert out.grad_fn is None and not out.requires_grad
    torch.testing.assert_close(out, ref.detach())


def test_no_images_give_zero_gradients():
    tensors = _weights(batch=0)
    ref, ref_grads = _run(naive_visual_embed, _copy(tensors), torch.zeros(0, 9, 12, dtype=torch.float64))
    out, grads = _run(fused_visual_embed, _copy(tensors), torch.zeros(0, 9, 12, dtype=torch.float64))
    assert out.shape == ref.shape == (0, 9, 12)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want)


def test_bfloat16_inputs_give_bfloat16_embeddings_close_to_float32():
    tensors = _weights(dtype=torch.float32)
    ref = naive_visual_embed(*tensors).detach()
    low = [t.detach().to(torch.bfloat16).requires_grad_() for t in tensors]
    out = fused_visual_embed(*low, chunk_rows=4)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)
    out.float().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.bfloat16 for t in low)


def test_chunks_cover_every_row_once():
    for total in (0, 1, 5, 21, 576, 2304):
        for rows in (1, 4, 7, 512, 5000):
            chunks = _chunks(total, rows)
            assert [i for a, b in chunks for i in range(a, b)] == list(range(total))
            assert all(b - a <= rows for a, b in chunks)
    assert chunk_rows_for(131070) == 1024  # batch 4 (2304 rows) in three chunks


def test_shape_errors():
    tensors = _weights()
    with pytest.raises(ValueError, match="VTE has 50 rows"):
        fused_visual_embed(*tensors, use_indicators=False)
    with pytest.raises(ValueError, match="features must be"):
        fused_visual_embed(tensors[0][..., :3], *tensors[1:])
    with pytest.raises(ValueError, match="k >= 1"):
        topk_visual_embed(*tensors, 0)


# -- top-k ---------------------------------------------------------------------------------------------
def test_topk_with_every_word_is_the_dense_result():
    tensors = _weights()
    dense = naive_visual_embed(*tensors).detach()
    for k in (48, 1000):  # V' = 48 words; larger k is clamped
        torch.testing.assert_close(topk_visual_embed(*tensors, k, chunk_rows=5), dense, rtol=1e-12, atol=1e-12)


def _relative_error(k, peak):
    tensors = _weights(batch=2, patches=16, width=32, vocab=2048, hidden=32, dtype=torch.float32, seed=2)
    with torch.no_grad():
        tensors[2].mul_(peak)  # the LayerNorm gain sets how peaked the distributions are
        dense = fused_visual_embed(*tensors)
        sparse = topk_visual_embed(*tensors, k)
    return ((sparse - dense).norm() / dense.norm()).item()


def test_topk_error_falls_with_k_and_is_small_on_peaked_distributions():
    errors = [_relative_error(k, peak=8.0) for k in (1, 4, 16, 64, 256)]
    assert all(a > b for a, b in itertools.pairwise(errors)), errors
    assert errors[2] < 0.02  # k = 16 on trained-like distributions
    assert _relative_error(16, peak=1.0) > 10 * errors[2]  # flat distributions need many more words


# -- memory ------------------------------------------------------------------------------------------


def test_fused_backward_saves_a_small_fraction_of_the_naive_activations():
    """Batch-4-like shape (4 images of 128 patches, V = 8192): fused saves <= 1/4 of naive.

    In one chunk it saves the features and three statistics per row (~1/100 of naive); in several
    it also keeps the last chunk's float32 normalised logits while they cost <= 1/5 of naive
    (float32: a chunk of at most 2/5 of the rows; bfloat16 inputs, whose naive activations are half
    the size: 1/5 of the rows).
    """
    rows, words = 4 * 128, 8190

    def saved(dtype, chunk_rows):
        tensors = _weights(batch=4, patches=128, width=64, vocab=8192, hidden=64, dtype=dtype)
        return saved_activation_bytes(fused_visual_embed, tensors, chunk_rows=chunk_rows)

    for dtype, chunk_rows in ((torch.float32, 64), (torch.float32, 128), (torch.bfloat16, 64)):
        naive = saved_activation_bytes(naive_visual_embed, _weights(4, 128, 64, 8192, 64, dtype=dtype))
        assert naive >= 2 * rows * words * dtype.itemsize  # logits and probabilities
        one = saved(dtype, rows)
        assert one <= rows * (64 * dtype.itemsize + 3 * 4)  # the features and three statistics per row
        several = saved(dtype, chunk_rows)
        assert several - one == words * chunk_rows * 4  # ... and one chunk's float32 logits
        assert several <= naive / 4
    for dtype, chunk_rows in ((torch.float32, 256), (torch.bfloat16, 128)):  # too big a chunk to keep
        assert saved(dtype, chunk_rows) == saved(dtype, rows)


def test_a_retained_graph_gives_the_same_gradients_twice():
    """The kept chunk's buffer is reused during the first backward; the second must recompute it."""
    tensors = _weights(dtype=torch.float64)
    grad_out = torch.randn(3, 9, 12, dtype=torch.float64)
    out = fused_visual_embed(*tensors, chunk_rows=4)  # 21 rows: six chunks, the last one kept
    out.backward(grad_out, retain_graph=True)
    first = [t.grad.clone() for t in tensors]
    for t in tensors:
        t.grad = None
    out.backward(grad_out)
    _, reference = _run(naive_visual_embed, _copy(tensors), grad_out)
    for a, b, ref in zip(first, [t.grad for t in tensors], reference, strict=True):
        torch.testing.assert_close(a, ref)
        torch.testing.assert_close(b, ref)


# -- in the model ------------------------------------------------------------------------------------
def test_model_fused_and_naive_paths_agree(tiny_ovis):
    model = tiny_ovis.train()
    assert model.config.visual_path == "fused"
    pixels = torch.randn(2, 3, 32, 32)

    def encode():
        model.zero_grad(set_to_none=True)
        out = model.encode_images(pixels)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        head, norm = model.visual_tokenizer.head
        return out.detach(), [p.grad.clone() for p in (head.weight, norm.weight, norm.bias, model.vte.weight)]

    fused, fused_grads = encode()
    model.config.visual_path = "naive"
    naive, naive_grads = encode()
    torch.testing.assert_close(fused, naive, rtol=1e-5, atol=1e-6)
    for got, want in zip(fused_grads, naive_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def test_model_topk_applies_only_in_inference(tiny_ovis):
    model = tiny_ovis.eval()
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        dense = model.encode_images(pixels)
        model.config.visual_topk = 8
        approx = model.encode_images(pixels)
        model.config.visual_topk = model.config.visual_vocab_size
        full = model.encode_images(pixels)
    assert not torch.allclose(approx, dense)
    torch.testing.assert_close(full, dense, rtol=1e-5, atol=1e-6)
    model.config.visual_topk = 8
    model.train()
    torch.testing.assert_close(model.encode_images(pixels).detach(), dense, rtol=1e-5, atol=1e-6)


def test_config_checks_the_visual_path_options():
    assert OvisConfig().visual_path == "fused" and OvisConfig().visual_topk is None
    with pytest.raises(ValueError, match="visual_path"):
        OvisConfig(visual_path="chunked")
    with pytest.raises(ValueError, match="visual_topk"):
        OvisConfig(visual_topk=0)
    with pytest.raises(ValueError, match="visual_chunk_rows"):
        OvisConfig(visual_chunk_rows=1.5)
    config = OvisConfig(visual_path="naive", visual_topk=64, visual_chunk_rows=128)
    again = OvisConfig.from_dict(config.to_dict())
    assert (again.visual_path, again.visual_topk, again.visual_chunk_rows) == ("naive", 64, 128)


# -- merged patches (hidden_stride) and the tiled layout's five indicator rows --------------------------
def test_merge_patches_layout_with_padding():
    """5 x 5 patches, stride 2: padded to 6 x 6 at the bottom and right; token (i, j) is patches
    (2i, 2j), (2i, 2j+1), (2i+1, 2j), (2i+1, 2j+1) concatenated."""
    from ovis.model.visual_tokenizer import merge_patches

    features = torch.arange(2 * 25 * 3, dtype=torch.float64).view(2, 25, 3)
    merged = merge_patches(features, 2)
    assert merged.shape == (2, 9, 12)
    grid = features.view(2, 5, 5, 3)
    torch.testing.assert_close(merged[1, 0], torch.cat([grid[1, 0, 0], grid[1, 0, 1], grid[1, 1, 0], grid[1, 1, 1]]))
    torch.testing.assert_close(merged[0, 5], torch.cat([grid[0, 2, 4], torch.zeros(3), grid[0, 3, 4], torch.zeros(3)]))
    torch.testing.assert_close(merged[0, 8], torch.cat([grid[0, 4, 4], torch.zeros(9)]))
    assert merge_patches(features, 1) is features
    with pytest.raises(ValueError, match="square patch grid"):
        merge_patches(features[:, :24], 2)


def test_merge_order_and_head_equal_transformers_ovis2_vision_model():
    """transformers' Ovis2VisionModel (4 x 4 patches, hidden_stride 2): its merged features equal
    ``merge_patches`` of its encoder's output, and a structural head holding its head weights gives
    its probabilities, so Ovis2 head weights carry over unpermuted."""
    modeling = pytest.importorskip("transformers.models.ovis2.modeling_ovis2")
    from transformers.models.ovis2.configuration_ovis2 import Ovis2VisionConfig

    from ovis.model.visual_tokenizer import merge_patches, structural_head

    torch.manual_seed(0)
    config = Ovis2VisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=28,
        patch_size=7,
        hidden_stride=2,
        vocab_size=40,
    )
    vision = modeling.Ovis2VisionModel(config).eval()
    pixels = torch.randn(3, 3, 28, 28)
    with torch.no_grad():
        out = vision(pixels)
        patches = vision.transformer(pixels)[0]
        merged = merge_patches(patches, 2)
        head = structural_head(64, 35)
        head[0].weight.copy_(vision.head_linear.weight)
        head[1].load_state_dict(vision.head_norm.state_dict())
        probs = head(merged).softmax(dim=-1)
    assert patches.shape == (3, 16, 16) and merged.shape == (3, 4, 64)
    torch.testing.assert_close(merged, out.last_hidden_state, rtol=0, atol=0)
    torch.testing.assert_close(probs, out.pooler_output, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("chunk_rows", [2, 1000])
def test_fused_equals_naive_through_merged_patches_with_five_indicator_rows(chunk_rows):
    """The lean path covers the merged head: features [B, 25, D] merged 2 x 2 (padded) into a head
    of width 4D, a table with five indicator rows the path leaves alone (their gradient is zero)."""
    from ovis.model.visual_tokenizer import merge_patches

    gen = torch.Generator().manual_seed(3)
    batch, width, vocab, hidden = 2, 6, 40, 10
    words = vocab - 5
    patches = torch.randn(batch, 25, width, generator=gen, dtype=torch.float64)
    params = [
        torch.randn(words, 4 * width, generator=gen, dtype=torch.float64) / 5,
        1 + 0.2 * torch.randn(words, generator=gen, dtype=torch.float64),
        0.2 * torch.randn(words, generator=gen, dtype=torch.float64),
        torch.randn(vocab, hidden, generator=gen, dtype=torch.float64),
    ]
    grad_out = torch.randn(batch, 9, hidden, generator=gen, dtype=torch.float64)
    results = []
    for fn, kwargs in ((naive_visual_embed, {}), (fused_visual_embed, {"chunk_rows": chunk_rows})):
        leaves = _copy([patches.requires_grad_(), *[p.requires_grad_() for p in params]])
        out = fn(merge_patches(leaves[0], 2), *leaves[1:], use_indicators=False, indicator_rows=5, **kwargs)
        out.backward(grad_out)
        results.append((out.detach(), [t.grad for t in leaves]))
    (ref, ref_grads), (got, grads) = results
    assert got.shape == (batch, 9, hidden)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    for name, a, b in zip(["features", "head", "ln weight", "ln bias", "vte"], grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)
    assert torch.count_nonzero(grads[-1][words:]) == 0
    with pytest.raises(ValueError, match="needs 2 indicator rows"):
        fused_visual_embed(merge_patches(patches, 2), *params, use_indicators=True, indicator_rows=5)
