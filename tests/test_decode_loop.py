"""ovis's decode loop gives Hugging Face generate's tokens (greedy ids, seeded draws) for batch 1 and
left-padded batches of mixed lengths and image counts, stops rows on their own, and leaves to
generate what it does not reproduce."""

from __future__ import annotations

import copy

import pytest
import torch
from PIL import Image

from ovis.serve.decode_loop import Sampling, decode, needs_hf_generate
from ovis.serve.generation import IncrementalDecoder

RED = Image.new("RGB", (64, 64), (220, 40, 40))
BLUE = Image.new("RGB", (48, 80), (40, 80, 230))
ITEMS = [
    (RED, "What colour is it?"),
    (None, "A text-only question that is quite a bit longer than the others, to pad the batch."),
    ([RED, BLUE], "Compare the two pictures."),
    ([BLUE, RED, BLUE], "Three images: which differs?"),
]
MIXED = [0, 1, 2, 3]


@pytest.fixture(scope="module")
def runner(chatty_runner):
    return chatty_runner


def _inputs(runner, rows):
    requests = [runner.prepare(ITEMS[i][1], ITEMS[i][0]) for i in rows]
    batch = runner.processor.collate([r.sample for r in requests], padding_side="left")
    pixels = batch["pixel_values"] if batch["pixel_values"].numel() else None
    return batch["input_ids"], pixels, batch["attention_mask"]


def _generate(runner, rows, seed=None, max_new_tokens=12, **kwargs) -> torch.Tensor:
    input_ids, pixels, mask = _inputs(runner, rows)
    with torch.inference_mode():
        if seed is not None:
            torch.manual_seed(seed)
        return runner.model.generate(
            input_ids,
            pixels,
            mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=sorted(runner.eos_ids),
            pad_token_id=runner.tokenizer.pad_token_id,
            **kwargs,
        )


def _decode(runner, rows, sampling=None, seed=None, eos_ids=None, max_new_tokens=12, **kwargs) -> torch.Tensor:
    input_ids, pixels, mask = _inputs(runner, rows)
    with torch.inference_mode():
        if seed is not None:
            torch.manual_seed(seed)
        embeds = runner.model.embed_inputs(input_ids, pixels)
        return decode(
            runner.model.llm,
            embeds,
            mask,
            max_new_tokens=max_new_tokens,
            sampling=sampling or Sampling(),
            eos_ids=runner.eos_ids if eos_ids is None else eos_ids,
            pad_token_id=runner.tokenizer.pad_token_id,
            **kwargs,
        )


@pytest.mark.parametrize("rows", [[0], [1], [3], MIXED], ids=["image", "text", "three-images", "mixed-batch"])
def test_greedy_ids_equal_generate(runner, rows):
    ours, theirs = _decode(runner, rows), _generate(runner, rows, do_sample=False)
    assert ours.tolist() == theirs.tolist()
    assert len({tuple(r) for r in ours.tolist()}) == len(rows)  # the rows really differ


@pytest.mark.parametrize(
    "knobs", [dict(temperature=0.7, top_k=5, top_p=0.9), dict(temperature=1.5)], ids=["top-k-top-p", "temperature"]
)
def test_seeded_sampling_draws_what_generate_draws(runner, knobs):
    hf = dict(do_sample=True, top_k=0, top_p=1.0) | knobs
    ours = _decode(runner, MIXED, Sampling(do_sample=True, **knobs), seed=3)
    assert ours.tolist() == _generate(runner, MIXED, seed=3, **hf).tolist()
    assert ours.tolist() == _decode(runner, MIXED, Sampling(do_sample=True, **knobs), seed=3).tolist()
    assert ours.tolist() != _decode(runner, MIXED, Sampling(do_sample=True, **knobs), seed=4).tolist()


def test_repetition_penalty_counts_every_generated_token(runner):
    penalised = Sampling(repetition_penalty=1.5)
    n = 40  # long enough for the unpenalised replies to repeat themselves
    alone = [_decode(runner, [i], penalised, max_new_tokens=n)[0].tolist() for i in MIXED]
    assert alone == [_generate(runner, [i], repetition_penalty=1.5, max_new_tokens=n)[0].tolist() for i in MIXED]
    assert alone != [_decode(runner, [i], max_new_tokens=n)[0].tolist() for i in MIXED]  # the penalty bites
    # In a left-padded batch each row is penalised as it is alone (generate skips a padded row's
    # first new tokens, one per pad, so there its rows differ from their answers alone).
    together = _decode(runner, MIXED, penalised, max_new_tokens=n).tolist()
    assert [row[: len(a)] for row, a in zip(together, alone, strict=True)] == alone


def test_rows_stop_on_their_own_and_then_get_pad_tokens(runner):
    pad = runner.tokenizer.pad_token_id
    free = _decode(runner, MIXED, eos_ids=set()).tolist()
    steps = []

    def first_row_done_after_two(tokens):
        steps.append(tokens)
        return [len(steps) >= 2, False, False, False]

    # Row 2 ends at the token it produces third; row 0 is told it is done after two.
    eos = {free[2][2]} - set(free[1]) - set(free[3])
    assert eos, "the fixture's rows should not share that token"
    stopped = _decode(runner, MIXED, eos_ids=eos, on_step=first_row_done_after_two).tolist()
    assert stopped[0][:2] == free[0][:2] and set(stopped[0][2:]) == {pad}
    assert stopped[2][:3] == free[2][:3] and set(stopped[2][3:]) == {pad}
    assert stopped[1] == free[1] and stopped[3] == free[3]
    # When every row is done the loop ends before max_new_tokens.
    assert _decode(runner, [0], eos_ids=set(), on_step=lambda tokens: [True]).shape == (1, 1)
    with pytest.raises(ValueError, match="max_new_tokens must be at least 1; got 0"):
        _decode(runner, [0], max_new_tokens=0)


def test_what_the_loop_leaves_to_generate(runner, monkeypatch):
    llm = runner.model.llm
    assert needs_hf_generate(llm) is None
    assert needs_hf_generate(llm, num_beams=2) == "beam search"
    first = _decode(runner, [0])[0, 0].item()
    config = copy.deepcopy(llm.generation_config)
    config.suppress_tokens = [first]  # a setting the loop does not reproduce: never say that token
    monkeypatch.setattr(llm, "generation_config", config)
    assert "suppress_tokens" in needs_hf_generate(llm)
    # The runner then takes generate, so the checkpoint's setting still applies.
    result = runner.run(RED, "What colour is it?", max_new_tokens=12)
    expected = [t for t in _generate(runner, [0], do_sample=False)[0].tolist() if t not in runner.eos_ids]
    assert result["output"] == runner.tokenizer.decode(expected, skip_special_tokens=True)
    assert expected[0] != first


class _CountingTokenizer:
    """A tokenizer whose decode calls are recorded (how many ids each one decodes)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.sizes: list[int] = []

    def decode(self, ids, **kwargs):
        self.sizes.append(len(ids))
        return self.tokenizer.decode(ids, **kwargs)


def _leading_space_tokenizer():
    """A SentencePiece-style tokenizer (Metaspace): decoding from a word's first token drops its space."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<pad>"])
    tok.train_from_iterator(["the red square is next to the blue circle. é ü ✓"] * 10, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>")


@pytest.mark.parametrize("which", ["byte-level", "leading-space"])
def test_incremental_decoding_decodes_a_short_window_and_loses_nothing(toy_tokenizer, which):
    tokenizer = toy_tokenizer if which == "byte-level" else _leading_space_tokenizer()
    text = " ".join(["the red square is next to the blue circle é ✓"] * 12)
    ids = tokenizer.encode(text, add_special_tokens=False)
    counting = _CountingTokenizer(tokenizer)
    decoder = IncrementalDecoder(counting, skip_ids=set())
    pieces = [decoder.push(i) for i in ids]
    assert "".join(pieces) == decoder.text == tokenizer.decode(ids, skip_special_tokens=True)
    assert " " in "".join(pieces[1:5])  # spaces between words survive the windows
    # Never the whole reply so far, and about one decode a token.
    assert len(ids) > 100 and max(counting.sizes) <= IncrementalDecoder.WINDOW + 3
    assert len(counting.sizes) <= 1.3 * len(ids)


@pytest.mark.parametrize("which", ["byte-level", "leading-space"])
def test_incremental_text_equals_decoding_it_all_for_any_ids(toy_tokenizer, which):
    # Random ids: special tokens that decode to nothing, bytes that end mid-character, words with and
    # without a leading space (a window that started at an invisible token once lost that space).
    import random

    tokenizer = toy_tokenizer if which == "byte-level" else _leading_space_tokenizer()
    rng = random.Random(2)
    for _ in range(300):
        ids = [rng.randrange(len(tokenizer)) for _ in range(rng.randrange(1, 60))]
        decoder = IncrementalDecoder(tokenizer, skip_ids=set())
        streamed = "".join(decoder.push(i) for i in ids)
        whole = tokenizer.decode(ids, skip_special_tokens=True)
        assert streamed == (whole if not whole.endswith("\ufffd") else streamed), ids
        assert whole.startswith(streamed), ids
