"""The Ovis model itself: visual tokenizer, VTE, indicators, merging, forward, save/load, generate."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ovis.model import (
    IMAGE_TOKEN_ID,
    ImageCountError,
    OvisConfig,
    OvisForCausalLM,
    VisualEmbedding,
)
from ovis.model.visual_tokenizer import st_argmax, tokenize


def _ids(*parts, block):
    """Build a row from ints and 'IMG' markers (each a full image block)."""
    row = []
    for part in parts:
        row += [IMAGE_TOKEN_ID] * block if part == "IMG" else [part]
    return row


def test_tokenize_functions():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11, requires_grad=True)
    soft = tokenize(logits, "softmax", 1.0)
    assert torch.allclose(soft.sum(-1), torch.ones(2, 5))
    hard = tokenize(logits, "gumbel_argmax", 0.5)
    assert set(hard.unique().tolist()) == {0.0, 1.0} and torch.equal(hard.sum(-1), torch.ones(2, 5))
    st = st_argmax(logits)
    assert torch.equal(st.argmax(-1), logits.argmax(-1))
    assert torch.allclose(st.detach(), F.one_hot(logits.argmax(-1), 11).float())
    (st * torch.randn_like(st)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0  # straight-through gradient
    with pytest.raises(ValueError, match="tokenize_function"):
        OvisConfig(tokenize_function="argmax")


def test_vte_looks_up_ids_and_mixes_distributions():
    torch.manual_seed(0)
    vte = VisualEmbedding(10, 4)
    ids = torch.tensor([[3, 7]])
    assert torch.equal(vte(ids), vte.weight[ids])
    one_hot = F.one_hot(ids, 10).float()
    assert torch.allclose(vte(one_hot), vte.weight[ids])
    probs = torch.softmax(torch.randn(1, 2, 10), -1)
    assert torch.allclose(vte(probs), probs @ vte.weight)


def test_indicators_match_the_v1_formulation():
    """Begin/end rows are the VTE rows V-2 / V-1: same as padding with one-hot rows (v1)."""
    torch.manual_seed(0)
    vocab, batch, patches = 12, 3, 5
    vte = VisualEmbedding(vocab, 6)
    probs = torch.softmax(torch.randn(batch, patches, vocab - 2), -1)
    padded = F.pad(probs, (0, 2))
    begin = F.one_hot(torch.full((batch, 1), vocab - 2), vocab).float()
    end = F.one_hot(torch.full((batch, 1), vocab - 1), vocab).float()
    v1 = vte(torch.cat([begin, padded, end], dim=1))
    assert torch.allclose(vte.embed_distributions(probs, use_indicators=True), v1, atol=1e-6)


def test_merge_fills_blocks_in_order_for_a_mixed_batch(tiny_ovis):
    model, block = tiny_ovis, tiny_ovis.num_image_tokens
    assert block == 16 + 2
    rows = [
        _ids(5, "IMG", 6, 7, "IMG", 8, block=block),   # two images
        _ids(9, 10, 11, 12, 13, 14, block=block),        # text only
        _ids(15, 16, "IMG", block=block),                # image last
    ]
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        merged = model.embed_inputs(ids, pixels)
        images = model.encode_images(pixels)
        text = model.get_input_embeddings()(ids.clamp(min=0))
    mask = ids == IMAGE_TOKEN_ID
    assert torch.equal(merged[~mask], text[~mask])
    assert torch.equal(merged[0, 1:1 + block], images[0])
    assert torch.equal(merged[0, 3 + block:3 + 2 * block], images[1])
    assert torch.equal(merged[2, 2:2 + block], images[2])
    # Each block starts with the begin indicator and ends with the end indicator.
    assert torch.equal(images[:, 0], model.vte.weight[-2].expand(3, -1))
    assert torch.equal(images[:, -1], model.vte.weight[-1].expand(3, -1))


def test_image_count_mismatch_is_a_clear_error(tiny_ovis):
    block = tiny_ovis.num_image_tokens
    ids = torch.tensor([_ids(1, "IMG", 2, block=block)])
    with pytest.raises(ImageCountError, match=r"1 image block\(s\) but 2 image"):
        tiny_ovis.embed_inputs(ids, torch.randn(2, 3, 32, 32))
    with pytest.raises(ImageCountError, match=r"1 image block\(s\) but 0 image"):
        tiny_ovis.embed_inputs(ids, None)


def test_forward_backward_reaches_every_part(tiny_ovis):
    model = tiny_ovis.train()
    block = model.num_image_tokens
    ids = torch.tensor([_ids(3, "IMG", 4, 5, 6, block=block)])
    labels = ids.masked_fill(ids == IMAGE_TOKEN_ID, -100)
    out = model(input_ids=ids, pixel_values=torch.randn(1, 3, 32, 32), labels=labels)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = {
        "backbone first block": model.backbone.blocks()[0].mlp[0].weight.grad,
        "backbone last block": model.backbone.blocks()[-1].mlp[0].weight.grad,
        "head": model.visual_tokenizer.head[0].weight.grad,
        "vte": model.vte.weight.grad,
        "llm": model.llm.model.layers[0].mlp.up_proj.weight.grad,
    }
    for part, grad in grads.items():
        assert grad is not None and grad.abs().sum() > 0, part


def test_mlp_adapter(example_plugin, tiny_llm):
    from ovis.plugin_host import get_host

    entry = get_host().vision("example-vit")
    config = OvisConfig(
        llm_config=tiny_llm.config.to_dict(), vision_spec=entry.spec.model_dump(mode="json"), adapter="mlp"
    )
    model = OvisForCausalLM(config, llm=tiny_llm, backbone=entry.factory.from_spec(entry.spec, pretrained=False))
    images = model.encode_images(torch.randn(2, 3, 32, 32))
    assert images.shape == (2, 18, 64)
    assert model.vte.weight.shape == (2, 64)
    images.sum().backward()
    assert model.visual_tokenizer.head[0].weight.grad is not None


def test_save_load_round_trip_through_auto_classes(tiny_ovis, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    tiny_ovis.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()
    assert AutoConfig.from_pretrained(tmp_path).model_type == "ovis"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)  # no trust_remote_code
    assert isinstance(loaded, OvisForCausalLM)
    block = tiny_ovis.num_image_tokens
    ids = torch.tensor([_ids(1, "IMG", 2, 3, block=block)])
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        a = tiny_ovis(input_ids=ids, pixel_values=pixels).logits
        b = loaded.eval()(input_ids=ids, pixel_values=pixels).logits
    assert torch.equal(a, b)
    for (name, p), (_, q) in zip(tiny_ovis.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(p, q), name


def test_batched_generation_with_left_padding_matches_one_at_a_time(tiny_ovis, toy_processor):
    images = [Image.new("RGB", (40, 30), c) for c in ("red", "blue", "green")]
    convs = [
        [{"role": "user", "content": "<image> what colour is the square?"}],
        [{"role": "user", "content": "how many circles are there? there are"}],
        [{"role": "user", "content": "<image>\n<image> the square is"}],
    ]
    per_conv = [images[:1], [], images[1:]]
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    batch = toy_processor(convs, per_conv)
    assert (batch["attention_mask"][:, 0] == 0).any()  # left padding happened
    together = tiny_ovis.generate(batch["input_ids"], batch["pixel_values"], batch["attention_mask"], **kwargs)
    for i in range(3):
        one = toy_processor([convs[i]], [per_conv[i]])
        alone = tiny_ovis.generate(one["input_ids"], one["pixel_values"], one["attention_mask"], **kwargs)
        assert together[i, : alone.shape[1]].tolist() == alone[0].tolist(), i


def test_parameter_report_adds_up(tiny_ovis):
    report = tiny_ovis.parameter_report()
    parts = sum(v for k, v in report.items() if k != "total")
    assert parts == report["total"]
    assert report["visual_tokenizer.head"] == 32 * 254 + 2 * 254
    assert report["vte"] == 256 * 64


def test_activation_checkpointing_gives_the_same_loss_and_gradients(tiny_ovis):
    import warnings

    model = tiny_ovis.train()
    block = model.num_image_tokens
    ids = torch.tensor([_ids(3, "IMG", 4, 5, 6, block=block)])
    pixels = torch.randn(1, 3, 32, 32)

    def loss_and_grad():
        model.zero_grad()
        loss = model(input_ids=ids, pixel_values=pixels, labels=ids.clamp(min=0)).loss
        loss.backward()
        return loss.detach(), model.backbone.blocks()[0].mlp[0].weight.grad.clone()

    plain = loss_and_grad()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no deprecated transformers API on this path
        model.activation_checkpointing_enable({"use_reentrant": False})
    assert model.is_activation_checkpointing and model.backbone.checkpointing
    checkpointed = loss_and_grad()
    torch.testing.assert_close(plain, checkpointed)
    model.activation_checkpointing_disable()
    assert not model.is_activation_checkpointing
