"""Contract checks for plugins: what a vision backbone, an LLM and a chat format must do for ovis to
compose, train, save, load and serve them. A plugin's own tests call them; this repository's contract
tests run them over every installed backbone and format.

    from ovis.testing import check_chat_format, check_llm, check_vision_backbone

    def test_my_vit(tmp_path):
        check_vision_backbone("my-vit-tiny", tmp_path)

    def test_my_llm():
        check_llm("my-llm-tiny")

    def test_my_chat_format():
        check_chat_format(MyChatFormat(), my_tokenizer())

Each builds what the plugin registered (tiny presets, random init: nothing is downloaded) and raises
``AssertionError`` naming the first promise broken. The backbones are looked up on the process-wide
host (``ovis.get_host()``): an installed plugin is there; in a test, register one in-process with the
``ovis_plugin`` fixture.

This module is also a pytest plugin (the ``pytest11`` entry point ``ovis``), which gives the fixture
``ovis_plugin``: ``ovis_plugin(name, obj, distribution=None)`` registers ``obj`` (your plugin module, or
an instance of a class whose methods carry ``@hookimpl``) on the process-wide host for one test and
removes it after. Importing it imports neither torch nor transformers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

#: The conversations :func:`check_chat_format` renders by default: prompts with and without a system
#: turn, an image, whitespace and non-ASCII text, several turns.
SYSTEM = {"role": "system", "content": "Answer in one word."}
ASK = {"role": "user", "content": "What colour is the sky?"}
ASK_IMAGE = {"role": "user", "content": "<image>\nWhat is this?"}
REPLY = {"role": "assistant", "content": " Blue,\n\nmostly. Ünïcode ✓ "}
AGAIN = {"role": "user", "content": "And at night?\n"}
PROMPTS = [[ASK], [SYSTEM, ASK], [ASK_IMAGE], [ASK, REPLY, AGAIN], [SYSTEM, ASK_IMAGE, REPLY, AGAIN]]
DIALOGUES = [
    [ASK, REPLY],
    [SYSTEM, ASK_IMAGE, REPLY],
    [ASK, REPLY, AGAIN, {"role": "assistant", "content": "Black."}],
]


# -- vision backbones ----------------------------------------------------------------------------
def check_vision_backbone(name: str, tmp_path: str | Path, *, llm: str | None = None) -> None:
    """The vision backbone registered as ``name`` (a tiny, random-init preset) keeps its contract:

    * ``from_spec(spec, pretrained=False)`` builds it, also on the meta device, with the spec's width,
      patch count and ``num_layers`` blocks;
    * its image processor turns any size and mode into ``[B, 3, S, S]`` float32;
    * ``forward`` gives ``[B, num_patches, hidden_size]``: no class or register tokens, and other
      features for another image;
    * gradients reach its first and last blocks; gradient checkpointing recomputes and changes
      nothing; ``reinit_last_block`` changes the last block only;
    * composed with a tiny LLM (``llm``, default: the first tiny one installed), saved, and loaded back
      by ``ovis.load`` and by the training loader, every weight and the image tokens are the same.
    """
    import torch
    from PIL import Image

    from ovis.interfaces import VisionBackbone
    from ovis.plugin_host import get_host

    entry = get_host().vision(name)
    spec = entry.spec

    def build(seed: int = 0) -> VisionBackbone:
        torch.manual_seed(seed)
        return entry.factory.from_spec(spec, pretrained=False)

    size, n, d = spec.image_size, spec.num_patches, spec.hidden_size
    model = build()
    assert isinstance(model, VisionBackbone), f"{name}: from_spec gave a {type(model).__name__}, not a VisionBackbone"
    assert model.spec == spec, f"{name}: the backbone's .spec is not the spec it was built from"
    facts = (model.feature_dim, model.num_patches, len(model.blocks()))
    assert facts == (d, n, spec.num_layers), (
        f"{name}: (feature_dim, num_patches, len(blocks())) is {facts}; the spec says {(d, n, spec.num_layers)}"
    )

    images = [
        Image.new("RGB", (37, 23), (200, 30, 10)),
        Image.new("L", (5, 91), 128),
        Image.new("RGBA", (size + 1, size), (0, 0, 255, 100)),
    ]
    pixels = model.image_processor()(images)
    assert pixels.shape == (3, 3, size, size) and pixels.dtype == torch.float32, (
        f"{name}: the image processor gave {tuple(pixels.shape)} {pixels.dtype}, not (3, 3, {size}, {size}) float32"
    )
    model.eval()
    with torch.no_grad():
        out = model(pixels)
    assert out.shape == (3, n, d), (
        f"{name}: forward gave {tuple(out.shape)} for 3 images, not (3, {n}, {d}): one feature per patch, "
        "without class or register tokens"
    )
    assert out.dtype == torch.float32 and torch.isfinite(out).all(), f"{name}: forward gave {out.dtype} or non-finite"

    assert not torch.allclose(out[0], out[1]), f"{name}: forward gave the same features for two different images"

    _check_gradients_and_checkpointing(name, model, torch.randn(2, 3, size, size))
    _check_reinit_last_block(name, model)

    with torch.device("meta"):
        meta = build()
    tensors = [*meta.parameters(), *meta.buffers()]
    assert tensors and all(t.is_meta for t in tensors), f"{name}: from_spec under torch.device('meta') allocated memory"

    _check_composed_round_trip(name, Path(tmp_path), llm)


def _forward_backward(model, pixels) -> tuple[Any, dict[str, Any]]:
    model.zero_grad(set_to_none=True)
    out = model(pixels)
    (out.float() ** 2).mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _check_gradients_and_checkpointing(name: str, model, x) -> None:
    import torch
    from torch import nn

    model.train()
    out, grads = _forward_backward(model, x)
    blocks = model.blocks()
    for label, block in (("first", blocks[0]), ("last", blocks[-1])):
        for param_name, param in block.named_parameters():
            assert param.grad is not None and param.grad.abs().sum() > 0, (
                f"{name}: no gradient reaches {param_name} of the {label} block"
            )
    calls: list[int] = []
    handles = [
        m.register_forward_hook(lambda *_: calls.append(1)) for m in blocks[0].modules() if isinstance(m, nn.Linear)
    ]
    try:
        _forward_backward(model, x)
        plain = len(calls)
        model.set_gradient_checkpointing(True)
        calls.clear()
        out_ckpt, grads_ckpt = _forward_backward(model, x)
        # (recomputation may stop early, once every tensor the backward needs is back)
        assert len(calls) > plain, f"{name}: gradient checkpointing is on, but the first block was not recomputed"
        model.set_gradient_checkpointing(False)
        calls.clear()
        _forward_backward(model, x)
        assert len(calls) == plain, f"{name}: set_gradient_checkpointing(False) left checkpointing on"
    finally:
        for handle in handles:
            handle.remove()
    torch.testing.assert_close(out_ckpt, out, msg=lambda m: f"{name}: checkpointing changed the output: {m}")
    assert grads_ckpt.keys() == grads.keys(), f"{name}: checkpointing changed which parameters get gradients"
    for key in grads:
        torch.testing.assert_close(
            grads_ckpt[key], grads[key], msg=lambda m, key=key: f"{name}: checkpointing changed {key}'s gradient: {m}"
        )


def _check_reinit_last_block(name: str, model) -> None:
    import torch

    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.rand_like(param) + 0.5)  # so default-initialised norms change too
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    last = {id(p) for p in model.blocks()[-1].parameters()}
    model.reinit_last_block()
    for key, param in model.named_parameters():
        if id(param) in last:
            assert not torch.equal(param, before[key]), f"{name}: reinit_last_block left {key} unchanged"
        else:
            assert torch.equal(param, before[key]), f"{name}: reinit_last_block changed {key} outside the last block"


def _check_composed_round_trip(name: str, tmp_path: Path, llm: str | None) -> None:
    import torch

    import ovis
    from ovis.train.model_loading import load_streamed

    llm = llm or _tiny_llm()
    torch.manual_seed(0)
    model, processor = ovis.compose(vit=name, llm=llm, visual_vocab_size=32)
    directory = ovis.save(model, processor, tmp_path / f"{name}+{llm}", overwrite=True)
    pixels = model.backbone.image_processor()([_picture(model.backbone.spec.image_size)])
    model.eval()
    with torch.no_grad():
        tokens = model.encode_images(pixels)
    expected = model.state_dict()
    loaded, _ = ovis.load(directory)
    for label, other in (("ovis.load", loaded), ("the training loader", load_streamed(directory, dtype=torch.float32))):
        got = other.state_dict()
        assert got.keys() == expected.keys(), (
            f"{name}: saved and loaded by {label}, the model's weights are named otherwise: "
            f"{sorted(set(got) ^ set(expected))[:4]}"
        )
        changed = [k for k in expected if not torch.equal(got[k], expected[k])]
        assert not changed, f"{name}: saved and loaded by {label}, these weights changed: {changed[:4]}"
    with torch.no_grad():
        again = loaded.eval().encode_images(pixels)
    assert torch.equal(again, tokens), f"{name}: the loaded model gives other image tokens"


def _picture(size: int):
    from PIL import Image

    picture = Image.new("RGB", (size, size), (30, 120, 200))
    picture.paste((240, 200, 20), (size // 4, size // 4, size // 2, size // 2))
    return picture


def _tiny_llm() -> str:
    from ovis.plugin_host import get_host

    names = [e.spec.name for e in get_host().list("llm") if e.spec.tiny]
    assert names, "no tiny LLM is installed to compose the backbone with (pass llm=...)"
    return "qwen-toy" if "qwen-toy" in names else names[0]


# -- LLMs ------------------------------------------------------------------------------------------
def check_llm(name: str) -> None:
    """The LLM registered as ``name`` (a tiny preset, random init, its tokenizer built offline) keeps
    its contract: ``build_model(pretrained=False)`` matches the spec (width, layers, vocabulary), also on
    the meta device; the tokenizer has a pad token, a chat template and no id beyond the vocabulary,
    and the bos / eos / pad ids the architecture names are special tokens of it;
    the spec's chat format is registered and its end-of-turn token is one token of this tokenizer; a
    conversation trains a step (finite loss, a gradient in the embeddings) and the model generates."""
    import torch

    from ovis.interfaces.chat import IGNORE_INDEX, tokenize_segments
    from ovis.plugin_host import get_host

    host = get_host()
    entry = host.llm(name)
    spec = entry.spec
    llm = entry.factory(spec)
    torch.manual_seed(0)
    model = llm.build_model(pretrained=False)
    facts = (model.config.hidden_size, model.config.num_hidden_layers, tuple(model.get_input_embeddings().weight.shape))
    wanted = (spec.hidden_size, spec.num_layers, (spec.vocab_size, spec.hidden_size))
    assert facts == wanted, f"{name}: (hidden size, layers, embedding shape) is {facts}; the spec says {wanted}"
    assert llm.hidden_size == spec.hidden_size, f"{name}: the factory's hidden_size is not the spec's"
    with torch.device("meta"):
        meta = llm.build_model(pretrained=False)
    assert all(p.is_meta for p in meta.parameters()), f"{name}: build_model under the meta device allocated memory"

    tok = llm.build_tokenizer()
    assert tok.pad_token is not None and tok.pad_token_id is not None, f"{name}: the tokenizer has no pad token"
    assert len(tok) <= spec.vocab_size, f"{name}: the tokenizer has {len(tok)} tokens, the model {spec.vocab_size} rows"
    assert tok.chat_template, f"{name}: the tokenizer has no chat template (attach the one the chat format renders)"
    specials = set(tok.all_special_ids) | set(getattr(tok, "added_tokens_decoder", {}))
    for field in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(model.config, field, None)
        for token_id in value if isinstance(value, list) else [value]:
            if token_id is not None and token_id not in specials:
                shown = tok.convert_ids_to_tokens(token_id) if 0 <= token_id < len(tok) else "beyond the tokenizer"
                raise AssertionError(
                    f"{name}: the architecture's {field} is {token_id} ({shown!r} in the tokenizer), not a special "
                    f"token of the tokenizer (its bos / eos / pad are {tok.bos_token_id} / {tok.eos_token_id} / "
                    f"{tok.pad_token_id}): generation would stop, or pad, at the wrong token"
                )
    fmt = host.chat_format(llm.chat_format_name)
    if fmt.end_of_turn is not None:
        ids = tok.encode(fmt.end_of_turn, add_special_tokens=False)
        assert len(ids) == 1, (
            f"{name}: chat format {fmt.name!r} ends turns with {fmt.end_of_turn!r}, which this tokenizer "
            f"splits into {len(ids)} tokens: make it a special token"
        )

    messages = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Red."}]
    ids, labels = tokenize_segments(tok, fmt.segments(messages))
    assert any(label != IGNORE_INDEX for label in labels), f"{name}: chat format {fmt.name!r} learns nothing"
    out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
    assert out.logits.shape == (1, len(ids), spec.vocab_size) and torch.isfinite(out.loss), (
        f"{name}: a training step gave logits {tuple(out.logits.shape)} and loss {out.loss}"
    )
    out.loss.backward()
    grad = model.get_input_embeddings().weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, (
        f"{name}: no gradient reached the token embeddings"
    )
    model.eval()
    prompt = tok(fmt.render(messages[:1], add_generation_prompt=True), add_special_tokens=False, return_tensors="pt")
    generated = model.generate(
        **prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id
    )
    assert generated.shape == (1, prompt["input_ids"].shape[1] + 4), f"{name}: generate gave {generated.shape}"


# -- chat formats ----------------------------------------------------------------------------------
def check_chat_format(
    chat_format: Any, tokenizer: Any, conversations: Sequence[tuple[list[dict], bool]] | None = None
) -> None:
    """``chat_format`` (a ``ChatFormat``) renders and cuts ``conversations`` (``(messages,
    add_generation_prompt)`` pairs; default: :data:`PROMPTS` with and without the generation prompt
    and :data:`DIALOGUES`) so that training and inference agree with ``tokenizer``:

    * ``render()`` equals ``tokenizer.apply_chat_template`` (where the tokenizer has a template);
    * the segments tokenized one by one (``tokenize_segments``, what training does) equal the rendered
      text tokenized whole (what inference does), each ``<image>`` one ``IMAGE_PLACEHOLDER_ID``;
    * what is learned is the assistant replies, in order, each with the end-of-turn token.

    A conversation the format refuses with a ``ChatFormatError`` (a role it does not have) is passed
    over; the template is given the messages as the format prepares them (``prepare``: with its
    ``default_system`` message first where the conversation has none).
    """
    from ovis.interfaces.chat import IGNORE_INDEX, ChatFormatError, Segment, tokenize_segments

    cases = list(conversations) if conversations is not None else _default_conversations()
    label = f"chat format {chat_format.name!r}"
    end_ids = chat_format.stop_token_ids(tokenizer) if chat_format.end_of_turn is not None else []
    if chat_format.end_of_turn is not None:
        assert end_ids, f"{label}: its end_of_turn {chat_format.end_of_turn!r} is not one token of this tokenizer"
    checked = 0
    for messages, generation in cases:
        case = f"{label}, {[m['role'] for m in messages]}, add_generation_prompt={generation}"
        try:
            rendered = chat_format.render(messages, add_generation_prompt=generation)
        except ChatFormatError:
            continue  # a conversation the format refuses, saying why (Gemma 2 has no system role)
        checked += 1
        if getattr(tokenizer, "chat_template", None):
            # (the template gets what the format renders: with its default system message, where it has one)
            prepared = [m.model_dump() for m in chat_format.prepare(messages, add_generation_prompt=generation)]
            theirs = tokenizer.apply_chat_template(prepared, tokenize=False, add_generation_prompt=generation)
            assert rendered == theirs, f"{case}: render() gives\n{rendered!r}\nthe tokenizer's template\n{theirs!r}"
        ids, labels = tokenize_segments(tokenizer, chat_format.segments(messages, add_generation_prompt=generation))
        whole, _ = tokenize_segments(tokenizer, [Segment(text=rendered, learn=False)])
        if ids != whole:
            shorter = min(len(ids), len(whole))
            at = next((i for i in range(shorter) if ids[i] != whole[i]), shorter)
            raise AssertionError(
                f"{case}: the segments tokenized one by one differ from the rendered prompt tokenized whole from "
                f"token {at} ({ids[at:at + 3]} against {whole[at:at + 3]}): cut segments next to special tokens"
            )
        learned = [t for t in labels if t != IGNORE_INDEX]
        replies = [m["content"] for m in messages if m["role"] == "assistant"]
        if generation:
            continue
        if not replies:
            assert not learned, f"{case}: something is learned in a conversation without an assistant reply"
            continue
        text = tokenizer.decode(learned)
        at = 0
        for reply in replies:
            found = text.find(reply.strip(), at)
            assert found >= 0, f"{case}: the learned text {text!r} lacks the reply {reply!r}"
            at = found + len(reply.strip())
        if end_ids:
            count = sum(learned.count(t) for t in end_ids)
            assert count == len(replies), (
                f"{case}: {count} end-of-turn tokens are learned for {len(replies)} assistant replies"
            )


    assert checked, f"{label}: refused every conversation (ChatFormatError)"


def _default_conversations() -> list[tuple[list[dict], bool]]:
    return [(p, g) for p in PROMPTS for g in (False, True)] + [(d, False) for d in DIALOGUES]


# -- the pytest plugin -----------------------------------------------------------------------------
try:
    import pytest
except ImportError:  # (the checks above work without pytest; the fixture needs it)
    pytest = None

if pytest is not None:

    @pytest.fixture
    def ovis_plugin() -> Iterator[Any]:
        """``register(name, obj, distribution=None)``: add a plugin object to the process-wide host
        for this test (``ovis.compose`` / ``ovis.load`` see it); removed when the test ends."""
        from ovis.plugin_host import get_host

        host = get_host()
        added: list[str] = []

        def register(name: str, obj: object, distribution: str | None = None):
            info = host.add_plugin(name, obj, distribution=distribution)
            added.append(name)
            return info

        yield register
        for name in added:
            host.remove_plugin(name)
