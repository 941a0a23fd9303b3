"""The processor: chat rendering, <image> expansion, label masking, truncation, collation."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from ovis.interfaces import ChatFormatError
from ovis.model import IGNORE_INDEX, IMAGE_TOKEN_ID
from ovis.processing import OvisProcessor, SequenceTooLongError, with_image_markers

RED = Image.new("RGB", (20, 10), "red")


def _conv(user: str, answer: str | None = None):
    conv = [{"role": "user", "content": user}]
    if answer is not None:
        conv.append({"role": "assistant", "content": answer})
    return conv


def test_images_become_blocks_and_only_replies_are_learned(toy_processor):
    sample = toy_processor.encode(_conv("<image> what colour is the square?", "the square is red."), [RED])
    block = toy_processor.num_image_tokens
    ids, labels = sample.input_ids, sample.labels
    assert ids.count(IMAGE_TOKEN_ID) == block
    start = ids.index(IMAGE_TOKEN_ID)
    assert ids[start:start + block] == [IMAGE_TOKEN_ID] * block
    learned = [t for t in labels if t != IGNORE_INDEX]
    assert toy_processor.tokenizer.decode(learned) == "the square is red.\n"
    assert sample.pixel_values.shape == (1, 3, 32, 32)


def test_marker_and_image_counts_must_match(toy_processor):
    with pytest.raises(ChatFormatError, match=r"1 <image> marker\(s\) but 2 image\(s\)"):
        toy_processor.encode(_conv("<image> hi", "ok"), [RED, RED])
    with pytest.raises(ChatFormatError, match=r"0 <image> marker\(s\) but 1 image"):
        toy_processor.encode(_conv("hi", "ok"), [RED])


def test_markers_are_added_when_the_text_has_none():
    messages = with_image_markers(_conv("what is it?"), 2)
    assert messages[0].content == "<image>\n<image>\nwhat is it?"
    assert with_image_markers(_conv("<image> a"), 1)[0].content == "<image> a"


def test_truncation_never_cuts_inside_an_image_block(toy_processor):
    block = toy_processor.num_image_tokens
    conv = _conv("<image><image> the square is", "red. " * 30)
    full = toy_processor.encode(conv, [RED, RED])
    first = full.input_ids.index(IMAGE_TOKEN_ID)
    # Cut points: inside block 1, at the boundary of the back-to-back blocks, inside block 2.
    for limit, kept in ((first + 5, 0), (first + block, 1), (first + block + 3, 1)):
        toy_processor.max_length = limit
        ids, _, n = toy_processor._truncate(full.input_ids, full.labels)
        assert n == kept and len(ids) == first + kept * block, limit
        with pytest.raises(SequenceTooLongError, match="no assistant reply is left"):
            toy_processor.encode(conv, [RED, RED], overflow="truncate")
    # A long reply after the images: truncation keeps both whole blocks and part of the reply.
    toy_processor.max_length = first + 2 * block + 12
    cut = toy_processor.encode(conv, [RED, RED], overflow="truncate")
    assert len(cut.input_ids) <= toy_processor.max_length
    assert cut.input_ids.count(IMAGE_TOKEN_ID) == 2 * block and cut.num_images == 2
    assert any(label != IGNORE_INDEX for label in cut.labels)
    with pytest.raises(SequenceTooLongError, match="limit is"):
        toy_processor.encode(conv, [RED, RED])


def test_truncation_inside_a_block_drops_that_whole_image(toy_processor):
    block = toy_processor.num_image_tokens
    conv = [{"role": "user", "content": "<image> first"}, {"role": "assistant", "content": "red."},
            {"role": "user", "content": "<image> second"}, {"role": "assistant", "content": "blue."}]
    full = toy_processor.encode(conv, [RED, RED])
    second = [i for i, t in enumerate(full.input_ids) if t == IMAGE_TOKEN_ID][block]
    toy_processor.max_length = second + 4  # inside the second block
    cut = toy_processor.encode(conv, [RED, RED], overflow="truncate")
    assert cut.num_images == 1 and cut.input_ids.count(IMAGE_TOKEN_ID) == block
    assert cut.input_ids == full.input_ids[:second]


def test_collate_pads_and_keeps_images_in_sample_order(toy_processor):
    blue = Image.new("RGB", (10, 10), "blue")
    samples = [
        toy_processor.encode(_conv("<image> a", "b"), [RED]),
        toy_processor.encode(_conv("text only", "fine"), []),
        toy_processor.encode(_conv("<image> <image> c", "d"), [blue, RED]),
    ]
    batch = toy_processor.collate(samples, padding_side="right")
    assert batch["pixel_values"].shape[0] == 3
    assert torch.equal(batch["pixel_values"][0], samples[0].pixel_values[0])
    assert torch.equal(batch["pixel_values"][1], samples[2].pixel_values[0])
    lengths = batch["attention_mask"].sum(1).tolist()
    assert lengths == [len(s.input_ids) for s in samples]
    row = 1
    assert (batch["input_ids"][row, lengths[row]:] == toy_processor.tokenizer.pad_token_id).all()
    assert (batch["labels"][row, lengths[row]:] == IGNORE_INDEX).all()
    left = toy_processor.collate(samples, padding_side="left")
    assert left["attention_mask"][row, -1] == 1 and left["attention_mask"][row, 0] == 0


def test_processor_save_and_load(toy_processor, tmp_path):
    toy_processor.save_pretrained(tmp_path)
    loaded = OvisProcessor.from_pretrained(tmp_path)
    conv = _conv("<image> what colour is the square?", "red")
    a, b = toy_processor.encode(conv, [RED]), loaded.encode(conv, [RED])
    assert a.input_ids == b.input_ids and a.labels == b.labels
    assert torch.equal(a.pixel_values, b.pixel_values)
    assert loaded.chat_format.name == "example-plain"


def test_processor_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json: missing"):
        OvisProcessor.from_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="preprocessor_config.json: not valid JSON"):
        OvisProcessor.from_pretrained(tmp_path)


# -- the tiled layout (ovis.tiling) ----------------------------------------------------------------------
@pytest.fixture
def tiled_processor(toy_processor):
    from ovis.tiling import TilingOptions

    return OvisProcessor(
        tokenizer=toy_processor.tokenizer,
        image_processor=toy_processor.image_processor,
        chat_format=toy_processor.chat_format,
        num_image_tokens=toy_processor.num_image_tokens,
        max_length=512,
        tiling=TilingOptions(max_partition=4),
        tokens_per_tile=4,
    )


def test_tiled_processor_expands_each_image_by_its_own_grid(tiled_processor):
    from ovis.model.merging import INDICATOR_IDS
    from ovis.tiling import image_block, num_views

    wide, small = Image.new("RGB", (100, 30), "red"), Image.new("RGB", (20, 20), "blue")
    sample = tiled_processor.encode(_conv("<image> and <image> compared", "the same"), [wide, small])
    assert sample.grids == [(1, 3), (1, 1)] and sample.num_images == 2
    assert sample.pixel_values.shape == (num_views((1, 3)) + 1, 3, 32, 32)
    ids = sample.input_ids
    first, second = [i for i, t in enumerate(ids) if t == INDICATOR_IDS[0]]
    assert ids[first:first + len(image_block((1, 3), 4))] == image_block((1, 3), 4)
    assert ids[second:second + 7] == image_block((1, 1), 4)
    assert tiled_processor.image_positions((1, 3)) == len(image_block((1, 3), 4))
    assert all(label == IGNORE_INDEX for label, t in zip(sample.labels, ids, strict=True) if t < 0)
    assert tiled_processor.decode([t for t in ids if t >= 0]).startswith(tiled_processor.decode(ids[:first]))


def test_tiled_processor_saves_its_tiling_and_refuses_a_layout_without_tile_size(tiled_processor, tmp_path):
    from ovis.errors import ConfigError

    tiled_processor.save_pretrained(tmp_path)
    loaded = OvisProcessor.from_pretrained(tmp_path)
    assert loaded.tiling == tiled_processor.tiling and loaded.tokens_per_tile == 4
    conv, image = _conv("<image> what is it?", "red"), Image.new("RGB", (90, 40), "red")
    a, b = tiled_processor.encode(conv, [image]), loaded.encode(conv, [image])
    assert a.input_ids == b.input_ids and torch.equal(a.pixel_values, b.pixel_values) and a.grids == b.grids
    with pytest.raises(ConfigError, match="tokens_per_tile"):
        OvisProcessor(tokenizer=loaded.tokenizer, image_processor=loaded.image_processor,
                      chat_format=loaded.chat_format, num_image_tokens=18, tiling=loaded.tiling)
    tiled_processor.max_length = 20
    with pytest.raises(SequenceTooLongError, match=r"1x3 tiles = \d+ positions\) but the limit is 20"):
        tiled_processor.encode(_conv("<image> hi", "ok"), [Image.new("RGB", (100, 30))])


def test_one_conversation_not_wrapped_in_a_batch_is_named(toy_processor):
    from ovis.errors import UsageError

    messages = [{"role": "user", "content": "What colour?"}]
    with pytest.raises(UsageError, match=r"each a list of messages; .*processor\(\[messages\]"):
        toy_processor(messages)
    with pytest.raises(UsageError, match=r"2 conversations but 1 image lists"):
        toy_processor([messages, messages], [[]])
    assert toy_processor([messages])["input_ids"].shape[0] == 1


@pytest.mark.parametrize("messages, message", [
    ([{"role": "robot", "content": "x"}], r"message 0: role: Input should be 'system', 'user' or 'assistant'"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant"}], r"message 1: content: Field required"),
    (["hi"], r"message 0 is a str, not a mapping with 'role' and 'content'"),
])
def test_a_bad_message_is_named_by_its_position(toy_processor, messages, message):
    with pytest.raises(ChatFormatError, match=message):
        toy_processor([messages])
