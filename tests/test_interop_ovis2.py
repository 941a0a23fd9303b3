"""transformers' native Ovis2 layout (hf-ovis2): reading, writing, converting, and matching
transformers' own ``Ovis2ForConditionalGeneration``.

The hf-ovis2 checkpoints here are built by transformers itself (a small ``Ovis2Config``, random weights,
nothing downloaded) and saved with its own ``save_pretrained``; the expected logits and greedy ids are
transformers' model's. transformers' processor lays a non-square grid transposed (its row/col swap,
docs/high-resolution.md), so the models are compared on the same ``pixel_values`` / ``input_ids`` (ovis's
ids mapped to the checkpoint's token ids) and the processors separately, on square grids.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import Aimv2VisionConfig, AutoTokenizer, Ovis2Config, Ovis2ForConditionalGeneration
from transformers.models.ovis2.image_processing_pil_ovis2 import Ovis2ImageProcessorPil
from transformers.models.ovis2.processing_ovis2 import Ovis2Processor

import ovis
from ovis.cli import main
from ovis.interop import UnsupportedError, checkpoint_format, convert, load_hf_ovis2, save_hf_ovis2
from ovis.model import OvisForCausalLM
from ovis.model.merging import IMAGE_TOKEN_ID, INDICATOR_IDS
from ovis.model.ovis2_format import IMAGE_ATOM_TOKEN, IMAGE_MARKER_TOKEN, INDICATOR_TOKENS
from ovis.model.v1_format import ConversionError
from ovis.processing import OvisProcessor

V = 64  # visual vocabulary: 59 head outputs + 5 indicators
SIDE, PATCH, STRIDE = 64, 16, 2  # aimv2-tiny: 4 x 4 patches, merged 2 x 2 -> 4 tokens per view
TOKENS_PER_VIEW = ((SIDE // PATCH) // STRIDE) ** 2
VISION = {
    "hidden_size": 64,
    "intermediate_size": 176,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": SIDE,
    "patch_size": PATCH,
}
NAMES = [IMAGE_ATOM_TOKEN, *INDICATOR_TOKENS, IMAGE_MARKER_TOKEN]


def _image(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = (np.random.RandomState(seed).rand(height, width, 3) * 255).astype("uint8")
    return Image.fromarray(pixels)


def _perturb(module: torch.nn.Module, seed: int) -> None:
    """Move every weight off its initial value (norm gains off 1, biases off 0), so each one matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)


@pytest.fixture(scope="module")
def composed():
    """A tiled aimv2-tiny + qwen2.5-tiny ovis model (its processor gives the Qwen tokenizer)."""
    torch.manual_seed(0)
    return ovis.compose(
        vit="aimv2-tiny", llm="qwen2.5-tiny", max_partition=4, hidden_stride=STRIDE, visual_vocab_size=V
    )


def _hf_tokenizer(tokenizer, directory: Path):
    tokenizer.save_pretrained(directory)
    copy = AutoTokenizer.from_pretrained(str(directory))
    copy.add_special_tokens({"additional_special_tokens": NAMES}, replace_extra_special_tokens=False)
    return copy


def _hf_checkpoint(
    directory: Path,
    tokenizer,
    llm_config: dict,
    *,
    max_patches: int = 4,
    tie: bool = False,
    tokenize_function: str = "softmax",
) -> Ovis2ForConditionalGeneration:
    """A tiny random Ovis2ForConditionalGeneration saved by transformers with its Ovis2Processor."""
    tokenizer = _hf_tokenizer(tokenizer, directory)
    ids = tokenizer.convert_tokens_to_ids(NAMES)
    config = Ovis2Config(
        vision_config={**VISION, "vocab_size": V, "hidden_stride": STRIDE, "tokenize_function": tokenize_function},
        text_config={**llm_config, "tie_word_embeddings": tie},
        vocab_size=llm_config["vocab_size"],
        hidden_size=llm_config["hidden_size"],
        image_token_id=ids[0],
        visual_indicator_token_ids=ids[1:6],
        tie_word_embeddings=tie,
    )
    torch.manual_seed(1)
    model = Ovis2ForConditionalGeneration(config).eval()
    _perturb(model, 2)
    model.save_pretrained(directory)
    image_processor = Ovis2ImageProcessorPil(
        crop_to_patches=max_patches > 1, max_patches=max_patches, size={"height": SIDE, "width": SIDE}
    )
    Ovis2Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_length=TOKENS_PER_VIEW,
        chat_template=tokenizer.chat_template,
    ).save_pretrained(directory)
    return model


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, composed):
    directory = tmp_path_factory.mktemp("hf-ovis2")
    _, processor = composed
    hf = _hf_checkpoint(directory, processor.tokenizer, composed[0].config.llm_config.to_dict())
    return directory, hf


def _id_map(config) -> dict[int, int]:
    """ovis's image / indicator ids -> the checkpoint's token ids."""
    return {
        IMAGE_TOKEN_ID: config.image_token_id,
        **dict(zip(INDICATOR_IDS, config.visual_indicator_token_ids, strict=True)),
    }


def _prompts(processor: OvisProcessor):
    """(name, conversation, images): single image, several images, text only."""
    return [
        ("one wide image", "<image>\nWhat is this?", [_image(200, 90)]),
        ("one square image", "<image>\nDescribe.", [_image(64, 64, 1)]),
        (
            "three images",
            "<image> and <image> then <image>: compare",
            [_image(150, 150, 2), _image(40, 100, 3), _image(300, 80, 4)],
        ),
        ("text only", "Say something about cats.", []),
    ]


def _assert_same_model(ovis_model, ovis_processor, hf_model):
    ovis_model.eval()
    mapping = _id_map(hf_model.config)
    for name, text, images in _prompts(ovis_processor):
        sample = ovis_processor.encode([{"role": "user", "content": text}], images, add_generation_prompt=True)
        ours = torch.tensor([sample.input_ids])
        theirs = torch.tensor([[mapping.get(i, i) for i in sample.input_ids]])
        pixels = sample.pixel_values if images else None
        with torch.no_grad():
            expected = hf_model(input_ids=theirs, pixel_values=pixels).logits
            got = ovis_model(input_ids=ours, pixel_values=pixels).logits
        assert got.shape == expected.shape, name
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0, msg=name)
        greedy = dict(max_new_tokens=6, do_sample=False, pad_token_id=ovis_processor.tokenizer.pad_token_id)
        images_kwarg = {"pixel_values": pixels} if images else {}  # transformers' generate chokes on None
        expected_ids = hf_model.generate(input_ids=theirs, **images_kwarg, **greedy)[:, theirs.shape[1] :]
        got_ids = ovis_model.generate(ours, pixel_values=pixels, **greedy)
        assert got_ids.tolist() == expected_ids.tolist(), name


# -- hf-ovis2 -> ovis -------------------------------------------------------------------------------


def test_an_hf_ovis2_directory_is_detected_and_read_as_a_tiled_aimv2_model(hf_dir):
    directory, _ = hf_dir
    assert checkpoint_format(directory) == "hf-ovis2"
    model, processor, notes = load_hf_ovis2(directory)
    config = model.config
    assert (config.image_layout, config.hidden_stride, config.visual_vocab_size) == ("tiled", STRIDE, V)
    assert (config.max_partition, config.tile_resize, config.covering_threshold) == (4, "canvas", 0.9)
    assert config.vision_spec["builder"] == "hf-aimv2-vision"
    assert config.vision_spec["architecture"]["apply_final_norm"] is True
    assert model.tokens_per_tile == processor.tokens_per_tile == TOKENS_PER_VIEW
    assert processor.chat_format.name == "chatml"
    assert any("assumed for a qwen2 LLM" in n for n in notes)
    assert any("apply_final_norm" in n for n in notes)


def test_ovis_load_equals_transformers_ovis2_logits_and_greedy_ids(hf_dir):
    directory, hf = hf_dir
    model, processor = ovis.load(directory)
    _assert_same_model(model, processor, hf)


def test_from_pretrained_warns_with_what_was_mapped(hf_dir, caplog):
    directory, hf = hf_dir
    with caplog.at_level("WARNING", logger="ovis.model"):
        model = OvisForCausalLM.from_pretrained(directory)
    assert "transformers Ovis2 checkpoint (hf-ovis2); converted on load" in caplog.text
    assert "model.language_model -> llm.model" in caplog.text
    hf_state = hf.state_dict()
    assert torch.equal(model.vte.weight, hf_state["model.visual_embeddings_table.weight"])
    assert torch.equal(model.visual_tokenizer.head[0].weight, hf_state["model.vision_tower.head_linear.weight"])
    assert torch.equal(
        model.backbone.vision_model.embeddings.patch_embed.weight,
        hf_state["model.vision_tower.transformer.embeddings.patch_embedding.weight"],
    )


def test_the_final_norm_matters_and_is_applied(hf_dir):
    """The AIMv2 features of a model read from hf-ovis2 pass the trunk's final RMSNorm (as transformers'
    Ovis2VisionModel does); without it the logits differ, so the comparison above can fail."""
    directory, _ = hf_dir
    model, processor = ovis.load(directory)
    pixels = processor.tiler(_image(64, 64)).pixel_values
    with torch.no_grad():
        normed = model.backbone(pixels)
        model.backbone.vision_model.config.apply_final_norm = False
        raw = model.backbone(pixels)
        model.backbone.vision_model.config.apply_final_norm = True
    assert not torch.allclose(normed, raw, atol=1e-3)
    torch.testing.assert_close(model.backbone.final_norm(raw), normed, atol=0, rtol=0)


def test_the_processor_read_from_hf_ovis2_equals_transformers_processor_on_square_grids(hf_dir):
    """OvisProcessor.from_pretrained of the directory and transformers' Ovis2Processor (PIL backend)
    read from it: same image span (ids mapped) and pixels where the grid is square (transformers
    transposes the others: its row/col swap)."""
    directory, hf = hf_dir
    ours = OvisProcessor.from_pretrained(directory)
    theirs = Ovis2Processor.from_pretrained(str(directory))
    theirs.image_processor = Ovis2ImageProcessorPil.from_pretrained(str(directory))
    assert theirs.image_processor.max_patches == ours.tiling.max_partition == 4
    to_ovis = {v: k for k, v in _id_map(hf.config).items()}
    compared = 0
    for width, height in [(64, 64), (128, 128), (130, 120), (40, 30), (200, 190), (90, 100)]:
        image = _image(width, height)
        sample = ours.encode([{"role": "user", "content": "<image>\nhi"}], [image])
        if sample.grids[0] != sample.grids[0][::-1]:
            continue
        out = theirs(images=[image], text="<image>\nhi", return_tensors="pt")
        span = [to_ovis[i] for i in out["input_ids"][0].tolist() if i in to_ovis]
        start = sample.input_ids.index(INDICATOR_IDS[0])
        assert span == sample.input_ids[start : start + len(span)], (width, height)
        assert torch.equal(out["pixel_values"], sample.pixel_values), (width, height)
        compared += 1
    assert compared >= 4


def test_a_tied_llm_and_st_argmax_read_the_same(tmp_path, composed):
    """tie_word_embeddings (no lm_head tensor in the file) and st_argmax carry over."""
    _, processor = composed
    hf = _hf_checkpoint(
        tmp_path / "tied",
        processor.tokenizer,
        composed[0].config.llm_config.to_dict(),
        tie=True,
        tokenize_function="st_argmax",
    )
    assert "lm_head.weight" not in load_file(str(tmp_path / "tied" / "model.safetensors"))
    model, processor = ovis.load(tmp_path / "tied")
    assert model.config.tokenize_function == "st_argmax"
    assert model.llm.lm_head.weight.data_ptr() == model.llm.model.embed_tokens.weight.data_ptr()
    _assert_same_model(model, processor, hf)


# -- ovis -> hf-ovis2 -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def normed_ovis(tmp_path_factory, composed):
    """An ovis-composed model whose AIMv2 applies the final norm (what hf-ovis2 expresses), saved."""
    model, processor = composed
    config = model.config.__class__.from_dict(model.config.to_dict())
    config.vision_spec["architecture"]["apply_final_norm"] = True
    normed = OvisForCausalLM(config)
    normed.load_state_dict(model.state_dict())
    _perturb(normed, 3)
    directory = tmp_path_factory.mktemp("ovis") / "model"
    ovis.save(normed.eval(), processor, directory)
    return directory


def test_ovis_to_hf_ovis2_gives_transformers_the_same_logits_and_ids(normed_ovis, tmp_path):
    out = tmp_path / "hf"
    report = convert(normed_ovis, out, to="hf-ovis2")
    assert report.source_format == "ovis" and report.target_format == "hf-ovis2"
    assert checkpoint_format(out) == "hf-ovis2"
    hf = Ovis2ForConditionalGeneration.from_pretrained(str(out), dtype=torch.float32).eval()
    Ovis2Processor.from_pretrained(str(out))  # transformers reads the processor files
    model, processor = ovis.load(normed_ovis)
    _assert_same_model(model, processor, hf)
    config = json.loads((out / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert config["image_token_id"] == tokenizer.convert_tokens_to_ids(IMAGE_ATOM_TOKEN)
    assert config["visual_indicator_token_ids"] == tokenizer.convert_tokens_to_ids(list(INDICATOR_TOKENS))
    assert config["ovis"]["tile_resize"] == "pad" and config["ovis"]["chat_format"] == "qwen2.5"


def test_ovis_hf_ovis2_ovis_round_trip_is_bit_exact(normed_ovis, tmp_path):
    main(["convert", str(normed_ovis), "--to", "hf-ovis2", "--out", str(tmp_path / "hf")])
    main(["convert", str(tmp_path / "hf"), "--from", "hf-ovis2", "--out", str(tmp_path / "back")])
    first, first_processor = ovis.load(normed_ovis)
    back, back_processor = ovis.load(tmp_path / "back")
    a, b = first.state_dict(), back.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    for field in (
        "image_layout",
        "hidden_stride",
        "max_partition",
        "covering_threshold",
        "tile_resize",
        "visual_vocab_size",
        "tokenize_function",
        "tau",
        "multimodal_max_length",
        "chat_format",
    ):
        assert getattr(first.config, field) == getattr(back.config, field), field
    assert first.config.llm_config.to_dict() == {**back.config.llm_config.to_dict()}
    assert back_processor.chat_format.name == first_processor.chat_format.name
    assert back_processor.tiling == first_processor.tiling


def test_hf_ovis2_ovis_hf_ovis2_round_trip_is_bit_exact(hf_dir, tmp_path):
    directory, _ = hf_dir
    convert(directory, tmp_path / "ovis", to="ovis", from_format="hf-ovis2")
    assert checkpoint_format(tmp_path / "ovis") == "ovis"
    convert(tmp_path / "ovis", tmp_path / "again", to="hf-ovis2")
    a = load_file(str(directory / "model.safetensors"))
    b = load_file(str(tmp_path / "again" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    first = json.loads((directory / "config.json").read_text())
    again = json.loads((tmp_path / "again" / "config.json").read_text())
    for key in ("image_token_id", "visual_indicator_token_ids", "vocab_size", "hidden_size", "tie_word_embeddings"):
        assert first[key] == again[key], key
    for key, value in first["vision_config"].items():
        if key != "transformers_version":
            assert again["vision_config"][key] == value, key


# -- refusals ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"vit": "clip-tiny", "llm": "qwen2.5-tiny", "max_partition": 4}, "is not AIMv2"),
        ({"vit": "aimv2-tiny", "llm": "qwen2.5-tiny"}, "the v1 image layout"),
        ({"vit": "aimv2-tiny", "llm": "qwen2.5-tiny", "max_partition": 4, "adapter": "mlp"}, "adapter 'mlp'"),
        ({"vit": "aimv2-tiny", "llm": "gemma2-tiny", "max_partition": 4}, "LLM type 'gemma2'"),
        ({"vit": "aimv2-tiny", "llm": "qwen2.5-tiny", "max_partition": 4}, "before the final RMSNorm"),
    ],
)
def test_what_hf_ovis2_cannot_express_is_refused_with_the_reason(tmp_path, kwargs, reason):
    model, processor = ovis.compose(visual_vocab_size=V, **kwargs)
    with pytest.raises(UnsupportedError, match=reason):
        save_hf_ovis2(model, processor, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_keep_unnormalised_writes_the_release_style_aimv2_with_a_note(tmp_path, composed, capsys):
    model, processor = composed
    ovis.save(model, processor, tmp_path / "src")
    assert (
        main(
            [
                "convert",
                str(tmp_path / "src"),
                "--to",
                "hf-ovis2",
                "--keep-unnormalised",
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    assert "outputs differ" in capsys.readouterr().out
    assert checkpoint_format(tmp_path / "out") == "hf-ovis2"


def test_from_hf_ovis2_refuses_another_format_and_bad_configs(hf_dir, normed_ovis, tmp_path):
    directory, _ = hf_dir
    with pytest.raises(ConversionError, match="is in the 'ovis' format, not 'hf-ovis2'"):
        convert(normed_ovis, tmp_path / "x", to="ovis", from_format="hf-ovis2")
    bad = tmp_path / "bad"
    bad.mkdir()
    for path in directory.iterdir():
        (bad / path.name).write_bytes(path.read_bytes())
    config = json.loads((directory / "config.json").read_text())
    for edit, reason in [
        ({"text_config": {**config["text_config"], "model_type": "gemma2"}}, "text_config.model_type 'gemma2'"),
        (
            {"vision_config": {**config["vision_config"], "num_visual_indicator_tokens": 2}},
            "num_visual_indicator_tokens 2",
        ),
        ({"vocab_size": config["vocab_size"] - 1}, "lm_head rows"),
    ]:
        (bad / "config.json").write_text(json.dumps({**config, **edit}))
        with pytest.raises(ConversionError, match=reason):
            ovis.load(bad)
    assert main(["convert", str(bad), "--from", "hf-ovis2", "--out", str(tmp_path / "y")]) == 2


# -- the AIDC-AI Ovis2 release layout ("ovis2") -----------------------------------------------------------
# Hand-built: tensors under the release's names (Apple's AIMv2 modules: preprocessor.patchifier, fused
# trunk.blocks.N.attn.qkv, mlp.fc1/fc2/fc3), its config.json fields, a CLIPImageProcessor config. The
# reference below is the release's AIMv2 forward spelled out (features: the last block's output).

D, MLP, LAYERS, HEADS = 64, 176, 2, 4
RELEASE_TOKENIZER = {"model_type": "aimv2_visual_tokenizer", "vocab_size": V, "tokenize_function": "softmax",
                     "tau": 1.0, "depths": None, "drop_cls_token": False, "hidden_stride": STRIDE}  # fmt: skip
RELEASE_AIMV2 = {"model_type": "aimv2", "hidden_size": D, "intermediate_size": MLP, "num_hidden_layers": LAYERS,
                 "num_attention_heads": HEADS, "num_channels": 3, "image_size": SIDE, "patch_size": PATCH,
                 "rms_norm_eps": 1e-5, "attention_dropout": 0.0, "projection_dropout": 0.0, "qkv_bias": False,
                 "use_bias": False}  # fmt: skip


def _release_tensors(llm_state: dict, hidden: int, seed: int = 5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.05):
        return torch.randn(*shape, generator=g) * scale

    prefix = "visual_tokenizer.backbone."
    state = {
        prefix + "preprocessor.patchifier.proj.weight": rand(D, 3, PATCH, PATCH),
        prefix + "preprocessor.patchifier.proj.bias": rand(D),
        prefix + "preprocessor.patchifier.norm.weight": 1 + rand(D),
        prefix + "preprocessor.pos_embed": rand(1, (SIDE // PATCH) ** 2, D),
        prefix + "trunk.post_trunk_norm.weight": 1 + rand(D),
        "visual_tokenizer.head.0.weight": rand(V - 5, D * STRIDE * STRIDE),
        "visual_tokenizer.head.1.weight": 1 + rand(V - 5),
        "visual_tokenizer.head.1.bias": rand(V - 5),
        "vte.weight": rand(V, hidden, scale=1.0),
    }
    for i in range(LAYERS):
        block = f"{prefix}trunk.blocks.{i}."
        state |= {
            block + "attn.qkv.weight": rand(3 * D, D),
            block + "attn.proj.weight": rand(D, D),
            block + "norm_1.weight": 1 + rand(D),
            block + "norm_2.weight": 1 + rand(D),
            block + "mlp.fc1.weight": rand(MLP, D),
            block + "mlp.fc2.weight": rand(D, MLP),
            block + "mlp.fc3.weight": rand(MLP, D),
        }
    return state | {"llm." + k: v.clone() for k, v in llm_state.items()}


def _rms(x, weight, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _release_features(state: dict, pixels: torch.Tensor) -> torch.Tensor:
    """The release's AIMv2 trunk: patchify, RMSNorm, + pos_embed; blocks of fused-qkv attention and
    SwiGLU (silu(fc1) * fc3 -> fc2); the last block's output, post_trunk_norm not applied."""
    p = "visual_tokenizer.backbone."
    x = torch.nn.functional.conv2d(pixels, state[p + "preprocessor.patchifier.proj.weight"],
                                   state[p + "preprocessor.patchifier.proj.bias"], stride=PATCH)  # fmt: skip
    x = _rms(x.flatten(2).transpose(1, 2), state[p + "preprocessor.patchifier.norm.weight"])
    x = x + state[p + "preprocessor.pos_embed"]
    batch, n, _ = x.shape
    for i in range(LAYERS):
        b = f"{p}trunk.blocks.{i}."
        h = _rms(x, state[b + "norm_1.weight"])
        qkv = (h @ state[b + "attn.qkv.weight"].T).reshape(batch, n, 3, HEADS, D // HEADS).permute(2, 0, 3, 1, 4)
        attn = torch.nn.functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        x = x + attn.transpose(1, 2).reshape(batch, n, D) @ state[b + "attn.proj.weight"].T
        h = _rms(x, state[b + "norm_2.weight"])
        gate = torch.nn.functional.silu(h @ state[b + "mlp.fc1.weight"].T) * (h @ state[b + "mlp.fc3.weight"].T)
        x = x + gate @ state[b + "mlp.fc2.weight"].T
    return x


@pytest.fixture(scope="module")
def chatml_composed():
    """aimv2-tiny + qwen1.5-tiny: chat format chatml, whose release formatter is QwenConversationFormatter."""
    torch.manual_seed(0)
    return ovis.compose(vit="aimv2-tiny", llm="qwen1.5-tiny", max_partition=4, hidden_stride=STRIDE,
                        visual_vocab_size=V)  # fmt: skip


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory, chatml_composed):
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    model, processor = chatml_composed
    directory = tmp_path_factory.mktemp("ovis2-release")
    llm_config = model.config.llm_config
    torch.manual_seed(6)
    llm = AutoModelForCausalLM.from_config(llm_config)
    state = _release_tensors(llm.state_dict(), llm_config.hidden_size)
    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "model.safetensors"))
    config = {
        "architectures": ["Ovis"], "model_type": "ovis",
        "auto_map": {"AutoConfig": "configuration_ovis.OvisConfig", "AutoModelForCausalLM": "modeling_ovis.Ovis"},
        "conversation_formatter_class": "QwenConversationFormatter", "hidden_size": llm_config.hidden_size,
        "multimodal_max_length": 32768, "llm_config": llm_config.to_dict(),
        "visual_tokenizer_config": {**RELEASE_TOKENIZER, "backbone_config": RELEASE_AIMV2},
    }  # fmt: skip
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "crop_size": {"height": SIDE, "width": SIDE},
        "size": {"shortest_edge": SIDE}, "do_center_crop": False, "resample": 3,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
    }))  # fmt: skip
    processor.tokenizer.save_pretrained(directory)
    return directory, state


def test_an_ovis2_release_directory_reads_with_the_release_features(release_dir):
    directory, state = release_dir
    assert checkpoint_format(directory) == "ovis2"
    model, processor = ovis.load(directory)
    config = model.config
    assert (config.image_layout, config.hidden_stride, config.max_partition, config.tile_resize) == (
        "tiled",
        STRIDE,
        9,
        "pad",
    )
    assert processor.chat_format.name == "chatml" and processor.tokens_per_tile == TOKENS_PER_VIEW
    pixels = processor.tiler(_image(150, 70)).pixel_values
    with torch.no_grad():
        got = model.backbone(pixels)
    torch.testing.assert_close(got, _release_features(state, pixels), atol=1e-5, rtol=0)
    assert torch.equal(model.vte.weight, state["vte.weight"])
    assert torch.equal(model.visual_tokenizer.head[0].weight, state["visual_tokenizer.head.0.weight"])
    assert torch.equal(model.llm.lm_head.weight, state["llm.lm_head.weight"])


def test_ovis2_release_ovis_ovis2_release_round_trip_is_bit_exact(release_dir, tmp_path):
    directory, state = release_dir
    assert main(["convert", str(directory), "--from", "ovis2", "--out", str(tmp_path / "ovis")]) == 0
    assert checkpoint_format(tmp_path / "ovis") == "ovis"
    assert main(["convert", str(tmp_path / "ovis"), "--to", "ovis2", "--out", str(tmp_path / "back")]) == 0
    back = load_file(str(tmp_path / "back" / "model.safetensors"))
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)
    first = json.loads((directory / "config.json").read_text())
    again = json.loads((tmp_path / "back" / "config.json").read_text())
    for key in ("architectures", "model_type", "auto_map", "conversation_formatter_class", "hidden_size",
                "multimodal_max_length"):  # fmt: skip
        assert again[key] == first[key], key
    assert again["visual_tokenizer_config"]["backbone_config"] == RELEASE_AIMV2
    assert {k: again["visual_tokenizer_config"][k] for k in RELEASE_TOKENIZER} == RELEASE_TOKENIZER


def test_ovis_ovis2_release_ovis_round_trip_is_bit_exact(chatml_composed, tmp_path):
    model, processor = chatml_composed
    _perturb(model, 7)
    ovis.save(model, processor, tmp_path / "src")
    convert(tmp_path / "src", tmp_path / "release", to="ovis2")
    assert checkpoint_format(tmp_path / "release") == "ovis2"
    convert(tmp_path / "release", tmp_path / "back", to="ovis", from_format="ovis2")
    first, first_processor = ovis.load(tmp_path / "src")
    back, back_processor = ovis.load(tmp_path / "back")
    a, b = first.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for name in ("image_layout", "hidden_stride", "max_partition", "covering_threshold", "tile_resize",
                 "visual_vocab_size", "tokenize_function", "tau", "multimodal_max_length", "chat_format"):  # fmt: skip
        assert getattr(first.config, name) == getattr(back.config, name), name
    assert back_processor.tiling == first_processor.tiling
    # the same AIMv2 (the preset leaves transformers' defaults out; the release writes every field)
    built = [Aimv2VisionConfig(**m.config.vision_spec["architecture"]).to_dict() for m in (first, back)]
    assert built[0] == built[1]


def test_what_the_ovis2_release_cannot_express_is_refused(release_dir, hf_dir, composed, tmp_path):
    from ovis.interop import save_release

    directory, _ = release_dir
    model, processor = ovis.load(hf_dir[0])  # applies AIMv2's final norm
    with pytest.raises(UnsupportedError, match="applies the final norm"):
        save_release(model, processor, tmp_path / "a")
    with pytest.raises(UnsupportedError, match="chat format 'qwen2.5' has no release"):
        save_release(*composed, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    siglip = tmp_path / "siglip"
    siglip.mkdir()
    for path in directory.iterdir():
        (siglip / path.name).write_bytes(path.read_bytes())
    config = json.loads((directory / "config.json").read_text())
    config["visual_tokenizer_config"]["model_type"] = "siglip_visual_tokenizer"
    (siglip / "config.json").write_text(json.dumps(config))
    assert checkpoint_format(siglip) == "ovis2"
    with pytest.raises(UnsupportedError, match="SigLIP tokenizer is not converted yet"):
        ovis.load(siglip)
