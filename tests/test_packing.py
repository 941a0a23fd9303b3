"""Sequence packing (``data.packing``, :mod:`ovis.data.packing`): the rows it builds, and that a packed
batch trains exactly as the same samples padded: equal loss and gradients (float32, 1e-5) for text
and image samples, the v1 and the tiled layout, three LLM families (Qwen2, Llama, Gemma 2 with its
sliding window and soft-capped head), and whole training runs (PyTorch and DeepSpeed ZeRO-2)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import ovis
from ovis.data import DataCollator
from ovis.data.packing import pack_rows, pack_samples, padding_fraction, uses_varlen, varlen_kwargs
from ovis.model.merging import IGNORE_INDEX, IMAGE_TOKEN_ID
from ovis.processing import EncodedSample
from ovis.train import TrainConfig, Trainer
from ovis.train.step import BATCH_KEYS, TrainStep, packed_row_length


# -- rows -------------------------------------------------------------------------------------------
def test_first_fit_decreasing_fills_rows_and_keeps_an_overlong_sample_alone():
    rows = pack_rows([5, 3, 8, 2, 6, 1], max_length=10)
    # First fit, longest first, needs three rows (8+2 | 6+3+1 | 5: 10 wide); filled evenly, three rows
    # are 9 wide (8+1 | 6+2 | 5+3). Each row lists its samples in their original order.
    assert rows == [[2, 5], [3, 4], [0, 1]]
    assert sorted(i for row in rows for i in row) == list(range(6))
    lengths = [5, 3, 8, 2, 6, 1]
    assert all(sum(lengths[i] for i in row) <= 10 for row in rows)
    # Longer than a row: alone in a row of its own, never cut; the others still share.
    assert pack_rows([4, 25, 4, 3], max_length=10) == [[1], [0, 2], [3]]
    # Where evening out would overfill a row, first fit stays: 5+5 | 4+3+3 fit; evenly, 5+4 | 5+3+3 not.
    assert pack_rows([5, 5, 4, 3, 3], max_length=10) == [[0, 1], [2, 3, 4]]
    with pytest.raises(ValueError, match="max_length"):
        pack_rows([1], max_length=0)


def test_varlen_boundaries_come_from_the_position_ids():
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]])
    kwargs = varlen_kwargs(position_ids)
    assert kwargs["cu_seq_lens_q"].tolist() == [0, 3, 5, 6, 10, 12]
    assert kwargs["cu_seq_lens_q"].dtype == torch.int32 and kwargs["cu_seq_lens_k"] is kwargs["cu_seq_lens_q"]
    assert kwargs["max_length_q"] == kwargs["max_length_k"] == 4
    assert uses_varlen("flash_attention_2") and uses_varlen("flash_attention_3")
    assert not uses_varlen("sdpa") and not uses_varlen("eager") and not uses_varlen(None)


def _sample(n: int, images: int = 0, block: int = 3, first: int = 10) -> EncodedSample:
    ids = [first + i for i in range(n)]
    for k in range(images):  # an image block in the middle of the text
        ids[2 + k * (block + 1) : 2 + k * (block + 1) + block] = [IMAGE_TOKEN_ID] * block
    labels = [IGNORE_INDEX if t == IMAGE_TOKEN_ID or i < 2 else t for i, t in enumerate(ids)]
    pixels = torch.full((images, 3, 4, 4), float(first))
    return EncodedSample(ids, labels, pixels)


def test_packed_rows_hold_each_sample_whole_with_its_labels_positions_and_images():
    samples = [_sample(9, 1, first=100), _sample(4, first=200), _sample(12, 2, first=300), _sample(5, 1, first=400)]
    batch = pack_samples(samples, max_length=16, pad_token_id=0, image_size=4)
    assert batch["input_ids"].shape[0] < len(samples) and batch["input_ids"].shape[1] <= 16
    images_in_order = []
    for index, sample in enumerate(samples):
        row, start, n = batch["sample_rows"][index].tolist()
        span = slice(start, start + n)
        assert batch["input_ids"][row, span].tolist() == sample.input_ids  # whole, image blocks included
        assert batch["labels"][row, span].tolist() == sample.labels  # labels unchanged
        assert batch["position_ids"][row, span].tolist() == list(range(n))
        images_in_order.append((row, start, sample))
    # The model fills image positions in row-major order: the pixel values follow that order.
    expected = [s.pixel_values for _, _, s in sorted(images_in_order, key=lambda x: x[:2]) if s.num_images]
    torch.testing.assert_close(batch["pixel_values"], torch.cat(expected))
    # The rest of a row is padding: pad id, no label, its own segment.
    used = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
    for row, start, n in batch["sample_rows"].tolist():
        used[row, start : start + n] = True
    assert (batch["input_ids"][~used] == 0).all() and (batch["labels"][~used] == IGNORE_INDEX).all()
    real = sum(len(s.input_ids) for s in samples)
    assert padding_fraction(batch) == pytest.approx(1 - real / batch["input_ids"].numel())


# -- packed == padded: loss and gradients ---------------------------------------------------------------
def _image(colour: str, size: tuple[int, int] = (40, 30)) -> Image.Image:
    return Image.new("RGB", size, colour)


def _conversations(wide: bool = False) -> list[tuple[list[dict], list[Image.Image]]]:
    size = (120, 40) if wide else (40, 30)  # wide: several tiles in the tiled layout
    return [
        (
            [
                {"role": "user", "content": "<image>\nWhat colour is it?"},
                {"role": "assistant", "content": "It is red, quite red."},
            ],
            [_image("red", size)],
        ),
        ([{"role": "user", "content": "Say a number."}, {"role": "assistant", "content": "two"}], []),
        (
            [
                {"role": "user", "content": "<image>\n<image>\nCompare these two pictures in detail please."},
                {"role": "assistant", "content": "The first is blue and the second is green, both plain."},
            ],
            [_image("blue", size), _image("green", size)],
        ),
        (
            [
                {"role": "user", "content": "hello there"},
                {"role": "assistant", "content": "hi! how can I help you today, friend?"},
            ],
            [],
        ),
        (
            [
                {"role": "user", "content": "Describe <image> briefly."},
                {"role": "assistant", "content": "A yellow card."},
            ],
            [_image("yellow", size)],
        ),
    ]


def _step(model) -> TrainStep:
    return TrainStep(model, image_size=model.backbone.spec.image_size, dummy_visual=True)


def _loss_and_grads(model, batch) -> tuple[torch.Tensor, int, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss, count = _step(model)(**{k: batch[k] for k in BATCH_KEYS if batch.get(k) is not None})
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), int(count), grads


def _assert_same(padded, packed) -> None:
    loss_a, count_a, grads_a = padded
    loss_b, count_b, grads_b = packed
    assert count_a == count_b > 0
    torch.testing.assert_close(loss_b, loss_a, rtol=0, atol=1e-5)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=0, atol=1e-5, msg=name)


_MODELS = {  # (llm, layout options)
    "qwen2": ("qwen-toy", {}),
    "llama": ("llama3.2-tiny", {}),
    "gemma2": ("gemma2-tiny", {}),  # sliding window 8, soft-capped head (the non-plain head path)
    "qwen2-tiled": ("qwen-toy", {"max_partition": 4, "hidden_stride": 2}),
}


@pytest.fixture(scope="module", params=list(_MODELS))
def toy(request):
    llm, options = _MODELS[request.param]
    torch.manual_seed(0)
    model, processor = ovis.compose(vit="clip-toy", llm=llm, visual_vocab_size=64, **options)
    return request.param, model.float().train(), processor


def test_packed_batch_has_the_loss_and_gradients_of_the_padded_batch(toy):
    name, model, processor = toy
    samples = [processor.encode(m, i) for m, i in _conversations(wide=name.endswith("tiled"))]
    assert sum(s.num_images for s in samples) == 4
    longest = max(len(s.input_ids) for s in samples)
    padded = DataCollator(processor)(samples)
    packed = DataCollator(processor, packing=True, max_length=longest + 60, row_length="max_length")(samples)
    assert packed["num_samples"] == len(samples) and packed["input_ids"].shape[0] < len(samples)
    assert padding_fraction(packed) < padding_fraction(padded)
    _assert_same(_loss_and_grads(model, padded), _loss_and_grads(model, packed))
    # Every image block lands whole in its sample: the merged embeddings of each sample's span equal
    # those of its padded row (so the images are also in the right order).
    with torch.no_grad():
        rows_a = model.embed_inputs(padded["input_ids"], padded["pixel_values"])
        rows_b = model.embed_inputs(packed["input_ids"], packed["pixel_values"])
    for index, sample in enumerate(samples):
        row, start, n = packed["sample_rows"][index].tolist()
        # (the encoder sees the images in another order: float rounding, not another image)
        torch.testing.assert_close(rows_b[row, start : start + n], rows_a[index, :n], rtol=0, atol=1e-5)
        assert (packed["input_ids"][row, start : start + n] == IMAGE_TOKEN_ID).sum() == (
            torch.tensor(sample.input_ids) == IMAGE_TOKEN_ID
        ).sum()


def test_rows_as_long_as_the_longest_sample_never_cost_more_than_padding(toy):
    """The default row length (``"longest"``, what the trainer uses without flash-attention): no row
    longer than the padded batch's, fewer rows, less padding, and the same loss and gradients."""
    _, model, processor = toy
    samples = [processor.encode(m, i) for m, i in _conversations()]
    padded = DataCollator(processor)(samples)
    packed = DataCollator(processor, packing=True)(samples)
    assert packed["input_ids"].shape[1] == padded["input_ids"].shape[1]
    assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0]
    assert padding_fraction(packed) < padding_fraction(padded)
    _assert_same(_loss_and_grads(model, padded), _loss_and_grads(model, packed))
    assert packed_row_length(model) == "longest"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model.llm.config, "_attn_implementation", "flash_attention_2")
        assert packed_row_length(model) == "max_length"
    with pytest.raises(ValueError, match="row_length"):
        pack_samples(samples, max_length=64, pad_token_id=0, image_size=4, row_length="wide")


def test_a_batch_that_nothing_would_share_a_row_in_stays_padded(toy):
    _, _, processor = toy
    samples = [processor.encode(m, i) for m, i in _conversations()]
    # Rows no longer than the longest sample, and every two samples together longer than that.
    longest = max(len(t.input_ids) for t in samples)
    alike = [s for s in samples if len(s.input_ids) * 2 > longest]
    alike += [s for s in alike if len(s.input_ids) == longest]  # the longest twice: at least two
    batch = DataCollator(processor, packing=True)(alike)
    padded = DataCollator(processor)(alike)
    assert "position_ids" not in batch and batch["num_samples"] == len(alike)
    for key in padded:
        if torch.is_tensor(padded[key]):
            assert torch.equal(batch[key], padded[key]), key


def test_attention_crossing_samples_would_be_caught(toy):
    """The control: the same packed rows read as one sequence each (positions never restarting, so no
    block-diagonal mask) give another loss: the equality above is not vacuous."""
    _, model, processor = toy
    samples = [processor.encode(m, i) for m, i in _conversations()[:4]]
    packed = DataCollator(processor, packing=True, max_length=10_000, row_length="max_length")(samples)
    assert packed["input_ids"].shape[0] == 1  # all in one row
    loss, count, _ = _loss_and_grads(model, packed)
    crossing = dict(packed, position_ids=torch.arange(packed["input_ids"].shape[1]).unsqueeze(0))
    boundary = (packed["position_ids"][:, 1:] == 0) & (packed["labels"][:, 1:] != IGNORE_INDEX)
    crossing["labels"] = packed["labels"].clone()
    crossing["labels"][:, 1:][boundary] = IGNORE_INDEX  # the same labelled tokens
    loss_x, count_x, _ = _loss_and_grads(model, crossing)
    assert count_x == count and abs(loss_x.item() - loss.item()) > 1e-3


def test_a_sample_longer_than_max_length_gets_a_row_of_its_own_and_the_same_loss(toy):
    _, model, processor = toy
    samples = [processor.encode(m, i) for m, i in _conversations()]
    longest = max(range(len(samples)), key=lambda i: len(samples[i].input_ids))
    limit = len(samples[longest].input_ids) - 5
    packed = DataCollator(processor, packing=True, max_length=limit)(samples)
    row, start, n = packed["sample_rows"][longest].tolist()
    assert start == 0 and n == len(samples[longest].input_ids)
    assert (packed["sample_rows"][:, 0] == row).sum() == 1  # nothing shares its row
    _assert_same(_loss_and_grads(model, DataCollator(processor)(samples)), _loss_and_grads(model, packed))


def test_packing_refuses_left_padding_and_an_attention_mask(toy):
    _, model, processor = toy
    with pytest.raises(ValueError, match="padding_side"):
        DataCollator(processor, padding_side="left", packing=True)
    samples = [processor.encode(m, i) for m, i in _conversations()[:2]]
    packed = DataCollator(processor, packing=True, row_length="max_length")(samples)
    assert "position_ids" in packed
    with pytest.raises(ValueError, match="attention_mask"):
        _step(model)(
            **{k: packed[k] for k in ("input_ids", "labels", "pixel_values", "position_ids")},
            attention_mask=torch.ones_like(packed["input_ids"]),
        )


def _segment_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """A CPU stand-in for flash-attention's varlen kernel: causal attention within each segment of
    ``cu_seq_lens_q`` over the one flattened row, and an error when the boundaries did not arrive."""
    bounds = kwargs.get("cu_seq_lens_q")
    if bounds is None or kwargs.get("max_length_q") is None or query.shape[0] != 1:
        raise AssertionError("the varlen path got no cu_seq_lens_q / max_length_q, or rows not flattened")
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    out = torch.empty_like(query)
    for start, end in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        part = slice(start, end)
        out[:, :, part] = torch.nn.functional.scaled_dot_product_attention(
            query[:, :, part], key[:, :, part], value[:, :, part], is_causal=True, scale=scaling
        )
    return out.transpose(1, 2).contiguous(), None


@pytest.mark.parametrize("llm", ["qwen-toy", "llama3.2-tiny"])
def test_the_varlen_path_passes_each_samples_boundaries_and_matches_padding(llm, monkeypatch):
    """The flash-attention route of TrainStep (rows flattened, ``cu_seq_lens_*`` / ``max_length_*``
    passed down), run on the CPU through a registered stand-in for the varlen kernel."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

    name, calls = "flash_varlen_cpu_stand_in", []

    def attention(*args, **kwargs):
        calls.append(kwargs["cu_seq_lens_q"].tolist() if "cu_seq_lens_q" in kwargs else None)
        return _segment_attention(*args, **kwargs)

    monkeypatch.setitem(AttentionInterface._global_mapping, name, attention)
    monkeypatch.setitem(ALL_MASK_ATTENTION_FUNCTIONS._global_mapping, name, flash_attention_mask)
    torch.manual_seed(0)
    model, processor = ovis.compose(vit="clip-toy", llm=llm, visual_vocab_size=64)
    model.float().train()
    samples = [processor.encode(m, i) for m, i in _conversations()]
    padded = _loss_and_grads(model, DataCollator(processor)(samples))
    monkeypatch.setattr(model.llm.config, "_attn_implementation", name)
    assert uses_varlen(model.llm.config._attn_implementation)
    longest = max(len(s.input_ids) for s in samples)
    packed = DataCollator(processor, packing=True, max_length=longest + 40)(samples)
    _assert_same(padded, _loss_and_grads(model, packed))
    # Every layer ran the stand-in, with one segment per sample (plus any pad tails).
    assert len(calls) == model.llm.config.num_hidden_layers
    assert len(calls[0]) - 1 >= len(samples) and calls[0][-1] == packed["input_ids"].numel()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flash-attention varlen needs a CUDA GPU")
def test_flash_attention_varlen_matches_padded_sdpa():  # pragma: no cover - GPU only
    pytest.importorskip("flash_attn")
    torch.manual_seed(0)
    model, processor = ovis.compose(vit="clip-toy", llm="qwen-toy", visual_vocab_size=64, dtype="bfloat16")
    model = model.cuda().train()
    samples = [processor.encode(m, i) for m, i in _conversations()]
    padded = {k: v.cuda() if torch.is_tensor(v) else v for k, v in DataCollator(processor)(samples).items()}
    model.llm.set_attn_implementation("sdpa")
    loss_a, count_a, _ = _loss_and_grads(model, padded)
    model.llm.set_attn_implementation("flash_attention_2")
    assert packed_row_length(model) == "max_length"
    collate = DataCollator(processor, packing=True, max_length=256, row_length=packed_row_length(model))
    packed = {k: v.cuda() if torch.is_tensor(v) else v for k, v in collate(samples).items()}
    assert "position_ids" in packed
    loss_b, count_b, _ = _loss_and_grads(model, packed)
    assert count_a == count_b
    torch.testing.assert_close(loss_b.float(), loss_a.float(), rtol=0, atol=2e-2)  # bf16


def test_the_config_key_and_its_hash(tmp_path):
    base = {"model": tmp_path, "output_dir": tmp_path / "out", "data": {"max_length": 512}}
    off = TrainConfig.model_validate(base)
    on = TrainConfig.model_validate(base | {"data": {"max_length": 512, "packing": True}})
    assert off.data.packing is False and on.data.packing is True
    assert on.config_hash() != off.config_hash()
    # Off, the key is left out of the hash: a checkpoint written before the key existed still matches.
    dumped = off.model_dump(
        mode="json", exclude={"output_dir", "save_steps", "save_total_limit", "logging_steps", "num_workers"}
    )
    del dumped["data"]["packing"], dumped["optimizer"], dumped["muon_lr"]  # nor were the optimizer keys
    older = hashlib.sha256(json.dumps(dumped, sort_keys=True).encode()).hexdigest()[:16]
    assert off.config_hash() == older


# -- training runs -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("toy") / "model"
    ovis.compose(vit="clip-toy", llm="qwen-toy", visual_vocab_size=256, out=out)
    return out


@pytest.fixture(scope="module")
def data_info(tmp_path_factory) -> Path:
    """12 synthetic scenes (3 questions each) and 4 text-only conversations, one of them too long
    for ``max_length`` (truncated on encoding, as without packing)."""
    from ovis.data.synth import SynthSpec, write_synthetic_dataset

    root = tmp_path_factory.mktemp("data")
    info_path = write_synthetic_dataset(root, SynthSpec(train_images=12, eval_images=1, text_scenes=4), progress=False)
    long_reply = " ".join(["one two three"] * 40)
    text = [
        {
            "id": f"t{i}",
            "conversations": [
                {"from": "human", "value": "Say a number."},
                {"from": "gpt", "value": long_reply if i == 0 else "two"},
            ],
        }
        for i in range(4)
    ]
    (root / "text.json").write_text(json.dumps(text))
    info = json.loads(info_path.read_text())
    info["text"] = {"meta_file": "text.json", "data_format": "conversation"}
    info_path.write_text(json.dumps(info))
    return info_path


def _train(model: Path, info: Path, out: Path, *, packing: bool, **fields) -> Trainer:
    config = TrainConfig.model_validate(
        dict(
            stage=3,
            model=model,
            output_dir=out,
            per_device_batch_size=4,
            lr=3e-3,
            max_steps=8,
            save_steps=8,
            logging_steps=2,
            seed=0,
            precision="fp32",
            gradient_accumulation_steps=2,
            data={
                "dataset_info": info,
                "datasets": ["synth-conversations", "text"],
                "max_length": 200,
                "packing": packing,
            },
            **fields,
        )
    )
    trainer = Trainer(config, progress=False)
    trainer.run()
    return trainer


@pytest.mark.parametrize("engine", [None, "zero2"], ids=["pytorch", "deepspeed"])
def test_a_packed_run_learns_exactly_as_the_padded_run(engine, toy_dir, data_info, tmp_path, one_thread):
    padded = _train(toy_dir, data_info, tmp_path / "padded", packing=False, deepspeed=engine)
    packed = _train(toy_dir, data_info, tmp_path / "packed", packing=True, deepspeed=engine)
    assert packed.config.data.packing and isinstance(packed.collator, DataCollator) and packed.collator.packing
    everything = packed.collator([packed.dataset[i] for i in range(len(packed.dataset))])
    assert everything["input_ids"].shape[0] < everything["num_samples"] == len(packed.dataset)  # rows shared
    losses = [r["loss"] for r in packed.records]
    assert losses == pytest.approx([r["loss"] for r in padded.records], rel=1e-4)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses
    # Counted by sample, not by packed row; labelled tokens as padded.
    for key in ("samples", "tokens", "skipped", "sample_ids"):
        assert [r[key] for r in packed.records] == [r[key] for r in padded.records], key
    assert sum(r["samples"] for r in packed.records) == 8 * 2 * 4
