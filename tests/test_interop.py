"""Original Ovis v1 checkpoints: reading, writing, converting, and matching v1's outputs.

The v1 checkpoints here are built by the tests themselves, tiny and random, in the layout of the
released ones (``config.json`` with ``visual_tokenizer_config``, ``pytorch_model-*.bin`` shards with
an index, the tokenizer, a ``CLIPImageProcessor`` ``preprocessor_config.json``), from transformers
modules directly: nothing of ovis writes them, and nothing is downloaded. The expected logits are
computed from the written tensors by the v1 math, spelled out below.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoConfig, AutoModelForCausalLM, CLIPVisionConfig, CLIPVisionModel

import ovis
from ovis.cli import main
from ovis.interfaces import CLIP_MEAN, CLIP_STD, ImagePreprocessSpec, ImageProcessor
from ovis.interop import (
    ConversionError,
    MissingShardError,
    NotAnOvisCheckpointError,
    ShapeMismatchError,
    UnknownFormatterError,
    UnsupportedError,
    checkpoint_format,
    convert,
    save_original,
)
from ovis.model import IMAGE_TOKEN_ID, OvisForCausalLM
from ovis.plugin_host import get_host

V = 40  # visual vocabulary of the hand-built checkpoints: 38 head outputs + 2 indicators
CLIP = {
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "image_size": 32, "patch_size": 8, "projection_dim": 16, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
}
PATCHES = (32 // 8) ** 2
QUESTION = "What is in the picture?"
LLMS = {
    "qwen": {
        "preset": "qwen1.5-tiny",
        "formatter": "QwenConversationFormatter",
        "chat_format": "chatml",
        "prompt": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\n"
        f"{QUESTION}<|im_end|>\n<|im_start|>assistant\n",
    },
    "llama": {
        "preset": "llama3-tiny",
        "formatter": "Llama3ConversationFormatter",
        "chat_format": "llama3",
        "prompt": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful and honest "
        "multimodal assistant.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n<image>\n"
        f"{QUESTION}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    },
}


# -- a v1 checkpoint, written the way the original code saved one ---------------------------------

@dataclass
class V1Checkpoint:
    path: Path
    kind: str
    clip: CLIPVisionModel  # the reference tower, float32
    head_weight: torch.Tensor
    norm_weight: torch.Tensor
    norm_bias: torch.Tensor
    vte: torch.Tensor
    llm: torch.nn.Module
    state: dict[str, torch.Tensor]  # exactly what was written (bfloat16)
    tokenizer: object


def _v1_llm_config(llm) -> dict:
    """The LLM config as transformers 4.x wrote it in v1 checkpoints (rope_theta, torch_dtype)."""
    data = llm.config.to_diff_dict()
    rope = data.pop("rope_parameters")
    data.update(rope_theta=rope["rope_theta"], rope_scaling=None, torch_dtype="bfloat16",
                transformers_version="4.41.1")
    data.pop("layer_types", None)
    return data


def _write_v1(path: Path, kind: str, *, shards: int = 3) -> V1Checkpoint:
    spec = get_host().llm(LLMS[kind]["preset"]).spec
    provider = get_host().llm(spec.name).factory(spec)
    torch.manual_seed(0)
    clip = CLIPVisionModel(CLIPVisionConfig(**CLIP))
    llm = AutoModelForCausalLM.from_config(AutoConfig.for_model(**spec.architecture))
    head = torch.randn(V - 2, CLIP["hidden_size"]) * 0.2
    norm_weight, norm_bias = 1 + 0.1 * torch.randn(V - 2), 0.1 * torch.randn(V - 2)
    vte = torch.randn(V, spec.hidden_size)
    with torch.no_grad():  # larger LLM weights, so that the logits depend visibly on the input
        for param in llm.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.1)

    # The v1 module tree: Ovis(llm, visual_tokenizer(backbone=CLIPVisionModel with an inner
    # vision_model, head=Sequential(Linear, LayerNorm)), vte); released weights are bfloat16.
    state = {f"llm.{k}": v for k, v in llm.state_dict().items()}
    state.update({f"visual_tokenizer.backbone.vision_model.{k}": v for k, v in clip.state_dict().items()})
    state.update({
        "visual_tokenizer.head.0.weight": head,
        "visual_tokenizer.head.1.weight": norm_weight,
        "visual_tokenizer.head.1.bias": norm_bias,
        "vte.weight": vte,
    })
    state = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in state.items()}
    # The reference modules hold the bfloat16 values, upcast (exactly) to float32.
    clip.load_state_dict({k.removeprefix("visual_tokenizer.backbone.vision_model."): v.float()
                          for k, v in state.items() if k.startswith("visual_tokenizer.backbone.")})
    llm.load_state_dict({k.removeprefix("llm."): v.float() for k, v in state.items() if k.startswith("llm.")})

    path.mkdir(parents=True)
    keys = list(state)
    groups = [keys[i::shards] for i in range(shards)]
    weight_map = {}
    for i, group in enumerate(groups, 1):
        name = f"pytorch_model-{i:05d}-of-{shards:05d}.bin"
        torch.save({k: state[k] for k in group}, path / name)
        weight_map.update(dict.fromkeys(group, name))
    total = sum(v.numel() * v.element_size() for v in state.values())
    (path / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    config = {
        "architectures": ["Ovis"],
        "auto_map": {"AutoConfig": "configuration_ovis.OvisConfig", "AutoModelForCausalLM": "modeling_ovis.Ovis"},
        "conversation_formatter_class": LLMS[kind]["formatter"],
        "hidden_size": spec.hidden_size,
        "llm_config": _v1_llm_config(llm),
        "model_type": "ovis",
        "multimodal_max_length": 2048,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.41.1",
        "visual_tokenizer_config": {
            "backbone_config": {**CLIP, "model_type": "clip_vision_model", "architectures": ["CLIPVisionModel"],
                                "torch_dtype": "bfloat16", "dropout": 0.0, "initializer_factor": 1.0},
            "depths": None,
            "drop_cls_token": True,
            "hidden_stride": 1,
            "model_type": "clip_visual_tokenizer",
            "tau": 1.0,
            "tokenize_function": "softmax",
            "use_indicators": True,
            "vocab_size": V,
        },
    }
    (path / "config.json").write_text(json.dumps(config, indent=2))
    (path / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": {"height": 32, "width": 32}, "do_center_crop": False, "do_convert_rgb": True,
        "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": list(CLIP_MEAN),
        "image_processor_type": "CLIPImageProcessor", "image_std": list(CLIP_STD), "resample": 3,
        "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 32},
    }, indent=2))
    tokenizer = provider.build_tokenizer()
    if kind == "llama":  # Meta's Llama 3 tokenizer, as released, has no pad token
        tokenizer.pad_token = None
    tokenizer.save_pretrained(path)
    return V1Checkpoint(path, kind, clip.eval(), head, norm_weight, norm_bias, vte, llm.eval(),
                        state, tokenizer)


@pytest.fixture(scope="module")
def v1_qwen(tmp_path_factory):
    return _write_v1(tmp_path_factory.mktemp("v1") / "Ovis-Clip-Qwen-tiny", "qwen")


@pytest.fixture(scope="module")
def v1_llama(tmp_path_factory):
    return _write_v1(tmp_path_factory.mktemp("v1") / "Ovis-Clip-Llama3-tiny", "llama")


def _clone(src: Path, dst: Path) -> Path:
    """A copy of a checkpoint directory whose files are hard links (edit with _rewrite only)."""
    shutil.copytree(src, dst, copy_function=os.link)
    return dst


def _rewrite_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.unlink()  # break the hard link before writing
    path.write_text(json.dumps(data))


def _leftovers(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}.tmp-")]


# -- the v1 math, written out ---------------------------------------------------------------------

def v1_size(width: int, height: int, side: int) -> tuple[int, int]:
    """v1's resize target: the long side becomes ``side``, the short one ``int(short / long * side)``."""
    if width == height:
        return side, side
    if width > height:
        return side, int(height / width * side)
    return int(width / height * side), side


def v1_pixels(image: Image.Image, side: int) -> torch.Tensor:
    """v1 preprocessing: resize to ``v1_size`` (bicubic), rescale 1/255, normalise with CLIP
    mean/std, then centred zero padding."""
    new = v1_size(*image.size, side)
    array = np.asarray(image.convert("RGB").resize(new, Image.Resampling.BICUBIC))
    array = (array.astype(np.float64) * (1 / 255)).astype(np.float32)
    array = (array - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
    out = np.zeros((3, side, side), np.float32)
    top, left = (side - new[1]) // 2, (side - new[0]) // 2
    out[:, top:top + new[1], left:left + new[0]] = array.transpose(2, 0, 1)
    return torch.from_numpy(out)


def v1_reference_logits(ck: V1Checkpoint, pixels: torch.Tensor, before: list[int], after: list[int]):
    with torch.no_grad():
        features = ck.clip(pixel_values=pixels[None]).last_hidden_state[:, 1:]  # drop CLS, before post-norm
        logits = F.layer_norm(features @ ck.head_weight.bfloat16().float().T, (V - 2,),
                              ck.norm_weight.bfloat16().float(), ck.norm_bias.bfloat16().float())
        probs = torch.cat([logits.softmax(-1), torch.zeros(1, PATCHES, 2)], dim=-1)
        begin = F.one_hot(torch.tensor([[V - 2]]), V).float()
        end = F.one_hot(torch.tensor([[V - 1]]), V).float()
        tokens = torch.cat([begin, probs, end], dim=1)  # [1, 1 + patches + 1, V]
        visual = tokens @ ck.vte.bfloat16().float()
        embed = ck.llm.get_input_embeddings()
        embeds = torch.cat([embed(torch.tensor(before)), visual[0], embed(torch.tensor(after))])
        return ck.llm(inputs_embeds=embeds[None]).logits


def _image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (23, 37, 3), dtype=np.uint8))


# -- loading a v1 checkpoint ----------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["qwen", "llama"])
def test_a_v1_checkpoint_gives_the_v1_outputs(kind, request, caplog):
    ck: V1Checkpoint = request.getfixturevalue(f"v1_{kind}")
    assert checkpoint_format(ck.path) == "original"
    with caplog.at_level("WARNING", logger="ovis.interop"):
        model, processor = ovis.load(ck.path, dtype="float32")
    message = caplog.text
    assert "original Ovis v1 checkpoint" in message
    assert f"conversation_formatter_class {LLMS[kind]['formatter']} -> chat format '{LLMS[kind]['chat_format']}'" \
        in message
    assert "3 bin file(s) (pytorch_model.bin.index.json)" in message

    assert model.config.vision_spec["builder"] == "hf-clip-vision"
    assert processor.chat_format.name == LLMS[kind]["chat_format"]
    assert processor.num_image_tokens == PATCHES + 2 and processor.max_length == 2048
    if kind == "llama":  # no pad token in the tokenizer: Llama 3's v1 training pad, <|end_of_text|>
        assert processor.tokenizer.pad_token_id == 128001

    # The prompt: the v1 chat format, with the image block where <image> was.
    before, after = LLMS[kind]["prompt"].split("<image>")
    tok = ck.tokenizer
    before_ids = tok(before, add_special_tokens=False)["input_ids"]
    after_ids = tok(after, add_special_tokens=False)["input_ids"]
    image = _image()
    batch = processor([[{"role": "user", "content": f"<image>\n{QUESTION}"}]], [[image]])
    assert batch["input_ids"][0].tolist() == before_ids + [IMAGE_TOKEN_ID] * (PATCHES + 2) + after_ids
    pixels = v1_pixels(image, 32)
    assert torch.equal(batch["pixel_values"][0], pixels)

    expected = v1_reference_logits(ck, pixels, before_ids, after_ids)
    with torch.no_grad():
        got = model(**{k: batch[k] for k in ("input_ids", "pixel_values", "attention_mask")}).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert expected[0, -1].std() > 0.1  # the logits are far from uniform: the comparison means something


@pytest.mark.parametrize("kind", ["qwen", "llama"])
def test_the_runner_asks_a_v1_model_as_the_v1_runner_does(kind, request, tmp_path):
    # The v1 runner's query is "<image> " + text (one space), not the training data's "<image>\n".
    from ovis.serve.runner import OvisRunner, RunnerArguments

    ck: V1Checkpoint = request.getfixturevalue(f"v1_{kind}")
    v1_prompt = LLMS[kind]["prompt"].replace("<image>\n", "<image> ")
    before, after = v1_prompt.split("<image>")
    tok = ck.tokenizer
    expected = (tok(before, add_special_tokens=False)["input_ids"] + [IMAGE_TOKEN_ID] * (PATCHES + 2)
                + tok(after, add_special_tokens=False)["input_ids"])
    for path in (ck.path, convert(ck.path, tmp_path / kind, to="ovis").out):  # converted: the rule is kept
        runner = OvisRunner(RunnerArguments(model_path=str(path), dtype="float32", max_new_tokens=1))
        request_ = runner.prepare(QUESTION, _image())
        assert request_.prompt == v1_prompt
        assert list(request_.sample.input_ids) == expected


def test_loading_keeps_exactly_the_written_tensors(v1_qwen):
    model = OvisForCausalLM.from_pretrained(v1_qwen.path)  # detect and convert on load
    assert model.dtype == torch.bfloat16
    state = model.state_dict()
    assert state.keys() == v1_qwen.state.keys()
    for key, tensor in v1_qwen.state.items():
        assert state[key].dtype == tensor.dtype and torch.equal(state[key], tensor), key
    # AutoModelForCausalLM resolves the v1 config (model_type "ovis") to the same class, no remote code.
    auto = AutoModelForCausalLM.from_pretrained(v1_qwen.path)
    assert type(auto) is OvisForCausalLM and torch.equal(auto.vte.weight, v1_qwen.state["vte.weight"])
    config = AutoConfig.from_pretrained(v1_qwen.path)
    assert config.num_image_tokens == PATCHES + 2 and config.chat_format == "chatml"
    assert config.visual_vocab_size == V and config.architectures == ["OvisForCausalLM"]


def test_convert_from_original_writes_an_ovis_model(v1_qwen, tmp_path, capsys):
    out = tmp_path / "ovis-model"
    assert main(["convert", str(v1_qwen.path), "--from", "original", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "conversation_formatter_class QwenConversationFormatter -> chat format 'chatml'" in printed
    assert f"wrote {out} (ovis format)" in printed
    assert checkpoint_format(out) == "ovis"
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    model, processor = ovis.load(out)
    for key, tensor in v1_qwen.state.items():
        assert torch.equal(model.state_dict()[key], tensor), key
    assert processor.chat_format.name == "chatml" and processor.image_processor.spec.resize == "pad"
    # The tokenizer came along.
    assert processor.tokenizer(QUESTION)["input_ids"] == v1_qwen.tokenizer(QUESTION)["input_ids"]


def test_safetensors_v1_checkpoints_are_read_too(v1_qwen, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "st"
    shutil.copytree(v1_qwen.path, path, ignore=shutil.ignore_patterns("pytorch_model*"))
    save_file(v1_qwen.state, str(path / "model.safetensors"), metadata={"format": "pt"})
    model = OvisForCausalLM.from_pretrained(path)
    assert torch.equal(model.visual_tokenizer.head[0].weight, v1_qwen.state["visual_tokenizer.head.0.weight"])


# -- image preprocessing ---------------------------------------------------------------------------

def test_preprocessing_matches_a_hand_computed_expectation():
    """37 x 23 of one colour, 64 px: 64 x int(23 / 37 * 64) = 64 x 39 (not the rounded 40), rows
    12..50 hold the normalised colour, the rest is exactly 0; the transpose for a tall image."""
    processor = ImageProcessor(ImagePreprocessSpec(image_size=64))
    colour = (200, 100, 50)
    value = [(c / 255 - m) / s for c, m, s in zip(colour, CLIP_MEAN, CLIP_STD, strict=True)]
    wide, tall = processor([Image.new("RGB", (37, 23), colour), Image.new("RGB", (23, 37), colour)])
    expected = torch.zeros(3, 64, 64)
    for channel in range(3):
        expected[channel, 12:51, :] = value[channel]
    torch.testing.assert_close(wide, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(tall, expected.transpose(1, 2), rtol=0, atol=1e-6)
    assert torch.equal(wide[:, :12], torch.zeros(3, 12, 64)) and torch.equal(wide[:, 51:], torch.zeros(3, 13, 64))


def test_preprocessing_matches_v1_and_transformers_clip_processor_bit_for_bit():
    """v1 ran transformers' CLIPImageProcessor at the computed size, then padded."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    clip_processor = CLIPImageProcessorPil(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64},
                                           do_center_crop=False, resample=3)
    processor = ImageProcessor(ImagePreprocessSpec(image_size=64))
    rng = np.random.default_rng(1)
    for width, height in [(37, 23), (23, 37), (64, 64), (100, 7), (9, 90), (120, 77)]:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        ours = processor([image])[0]
        assert torch.equal(ours, v1_pixels(image, 64)), (width, height)
        w, h = v1_size(width, height, 64)
        small = clip_processor.preprocess(image, size={"height": h, "width": w}, return_tensors="pt")
        small = small["pixel_values"][0]
        assert small.shape == (3, h, w)
        top, left = (64 - h) // 2, (64 - w) // 2
        assert torch.equal(ours[:, top:top + h, left:left + w], small), (width, height)


# -- ovis -> original -> ovis ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def ovis_dir(tmp_path_factory):
    torch.manual_seed(0)
    model, processor = ovis.compose(vit="clip-tiny", llm="qwen-toy", visual_vocab_size=48, dtype="bfloat16")
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return ovis.save(model, processor, tmp_path_factory.mktemp("rt") / "tiny-ovis")


def _encode(processor):
    image = _image()
    return processor([[{"role": "user", "content": f"<image>\n{QUESTION}"}]], [[image]])


def test_round_trip_is_bit_identical(ovis_dir, tmp_path):
    v1, back = tmp_path / "v1", tmp_path / "back"
    assert main(["convert", str(ovis_dir), "--to", "original", "--out", str(v1), "--max-shard-size", "200KB"]) == 0

    # The v1 layout, as listed in the reference.
    names = {p.name for p in v1.iterdir()}
    assert {"config.json", "preprocessor_config.json", "pytorch_model.bin.index.json", "tokenizer.json"} <= names
    shards = sorted(v1.glob("pytorch_model-*.bin"))
    assert len(shards) > 1 and not list(v1.glob("*.safetensors"))
    config = json.loads((v1 / "config.json").read_text())
    assert config["model_type"] == "ovis" and config["architectures"] == ["Ovis"]
    assert config["auto_map"] == {"AutoConfig": "configuration_ovis.OvisConfig",
                                  "AutoModelForCausalLM": "modeling_ovis.Ovis"}
    assert config["conversation_formatter_class"] == "QwenConversationFormatter"
    assert config["hidden_size"] == 128 and config["multimodal_max_length"] == 1024
    assert config["llm_config"]["model_type"] == "qwen2" and config["llm_config"]["rope_theta"] == 10000.0
    vt = config["visual_tokenizer_config"]
    assert {k: vt[k] for k in ("model_type", "vocab_size", "tokenize_function", "tau", "depths", "use_indicators",
                               "drop_cls_token", "hidden_stride")} == {
        "model_type": "clip_visual_tokenizer", "vocab_size": 48, "tokenize_function": "softmax", "tau": 1.0,
        "depths": None, "use_indicators": True, "drop_cls_token": True, "hidden_stride": 1}
    assert vt["backbone_config"]["model_type"] == "clip_vision_model"
    assert vt["backbone_config"]["num_hidden_layers"] == 2 and vt["backbone_config"]["hidden_size"] == 64
    preprocessor = json.loads((v1 / "preprocessor_config.json").read_text())
    assert preprocessor["image_processor_type"] == "CLIPImageProcessor" and preprocessor["do_center_crop"] is False
    assert preprocessor["crop_size"] == {"height": 64, "width": 64} and preprocessor["resample"] == 3
    index = json.loads((v1 / "pytorch_model.bin.index.json").read_text())
    written = {}
    for shard in shards:
        written.update(torch.load(shard, weights_only=True))
    assert set(index["weight_map"]) == set(written)
    assert written["visual_tokenizer.head.0.weight"].shape == (46, 64)
    assert written["visual_tokenizer.head.1.bias"].shape == (46,)
    assert written["vte.weight"].shape == (48, 128)
    assert "visual_tokenizer.backbone.vision_model.encoder.layers.1.self_attn.q_proj.weight" in written

    assert main(["convert", str(v1), "--from", "original", "--out", str(back)]) == 0
    source, source_processor = ovis.load(ovis_dir)
    result, result_processor = ovis.load(back)
    a, b = source.state_dict(), result.state_dict()
    assert a.keys() == b.keys() == written.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype == torch.bfloat16 and torch.equal(a[key], b[key]), key
        assert torch.equal(written[key], a[key]), key

    batch, batch_back = _encode(source_processor), _encode(result_processor)
    for key in batch:
        assert torch.equal(batch[key], batch_back[key]), key
    with torch.no_grad():
        inputs = {k: batch[k] for k in ("input_ids", "pixel_values", "attention_mask")}
        assert torch.equal(source(**inputs).logits, result(**inputs).logits)
    assert result_processor.chat_format.name == source_processor.chat_format.name == "chatml"
    assert result_processor.image_processor.spec == source_processor.image_processor.spec
    assert result_processor.max_length == source_processor.max_length


def test_safetensors_output_and_loading_the_v1_directory_directly(ovis_dir, tmp_path):
    out = tmp_path / "v1-st"
    code = tmp_path / "remote-code"  # what a released v1 checkpoint ships for trust_remote_code
    code.mkdir()
    (code / "modeling_ovis.py").write_text("# the original release's code\n")
    report = convert(ovis_dir, out, to="original", safetensors=True, code_from=code)
    assert report.source_format == "ovis" and (out / "model.safetensors").is_file()
    assert (out / "modeling_ovis.py").read_text() == "# the original release's code\n"
    source, _ = ovis.load(ovis_dir)
    loaded, _ = ovis.load(out)  # a v1 directory, loaded in place
    for key, tensor in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key


@pytest.mark.parametrize("vit", ["clip-tiny-openclip", "clip-tiny-timm"])
def test_open_clip_and_timm_towers_are_written_in_transformers_layout(vit, tmp_path):
    torch.manual_seed(0)
    model, processor = ovis.compose(vit=vit, llm="qwen-toy", visual_vocab_size=48)
    with torch.no_grad():
        for param in model.backbone.parameters():
            param.add_(0.1 * torch.randn_like(param))
    notes = save_original(model, processor, tmp_path / "v1")
    assert any("converted from the" in note for note in notes)
    assert any("visual.proj" in note for note in notes) == (vit == "clip-tiny-openclip")
    loaded, loaded_processor = ovis.load(tmp_path / "v1")
    assert loaded.config.vision_spec["builder"] == "hf-clip-vision"
    assert loaded_processor.image_processor.spec == processor.image_processor.spec
    batch = _encode(processor)
    inputs = {k: batch[k] for k in ("input_ids", "pixel_values", "attention_mask")}
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model.eval()(**inputs).logits, rtol=1e-4, atol=1e-4)


def test_what_v1_cannot_express_is_refused(tmp_path):
    model, processor = ovis.compose(vit="clip-tiny", llm="qwen-toy", visual_vocab_size=48)
    with pytest.raises(UnsupportedError, match="chat format 'qwen2.5' has no Ovis v1 conversation_formatter_class"):
        model.config.conversation_formatter_class = None
        processor.chat_format = get_host().chat_format("qwen2.5")
        save_original(model, processor, tmp_path / "a")
    mlp, mlp_processor = ovis.compose(vit="clip-tiny", llm="qwen-toy", adapter="mlp")
    with pytest.raises(UnsupportedError, match="adapter 'mlp'"):
        save_original(mlp, mlp_processor, tmp_path / "b")
    siglip, siglip_processor = ovis.compose(vit="siglip-tiny", llm="qwen-toy", visual_vocab_size=48)
    with pytest.raises(UnsupportedError, match="CLIP vision tower only"):
        save_original(siglip, siglip_processor, tmp_path / "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# -- errors ---------------------------------------------------------------------------------------

def test_a_directory_that_is_neither_format(tmp_path, ovis_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NotAnOvisCheckpointError, match="no config.json"):
        convert(empty, tmp_path / "out", to="ovis")
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(NotAnOvisCheckpointError, match="neither an ovis model .* nor an original Ovis v1 .*'llama'"):
        convert(llama, tmp_path / "out", to="original")
    with pytest.raises(ConversionError, match="already in ovis format"):
        convert(ovis_dir, tmp_path / "out", to="ovis")
    assert not (tmp_path / "out").exists()


def test_a_missing_shard_is_named_and_nothing_is_written(v1_qwen, tmp_path, capsys):
    src = _clone(v1_qwen.path, tmp_path / "src")
    (src / "pytorch_model-00002-of-00003.bin").unlink()
    out = tmp_path / "out"
    assert main(["convert", str(src), "--from", "original", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "1 of the 3 weight shard(s) listed in pytorch_model.bin.index.json is missing" in err
    assert "pytorch_model-00002-of-00003.bin" in err
    assert _leftovers(tmp_path, "out") == []
    with pytest.raises(MissingShardError, match="pytorch_model-00002-of-00003.bin"):
        OvisForCausalLM.from_pretrained(src)
    (src / "pytorch_model.bin.index.json").unlink()  # no index: the numbering tells
    with pytest.raises(MissingShardError, match="1 of 3 weight shard.*missing: pytorch_model-00002-of-00003.bin"):
        convert(src, out, to="ovis")


def test_a_shape_that_does_not_match_the_config(v1_qwen, tmp_path):
    src = _clone(v1_qwen.path, tmp_path / "src")
    _rewrite_json(src / "config.json", lambda c: c["visual_tokenizer_config"].update(vocab_size=64))
    with pytest.raises(ShapeMismatchError, match=r"vte.weight: checkpoint \(40, 64\) vs config \(64, 64\)"):
        convert(src, tmp_path / "out", to="ovis")
    with pytest.raises(ShapeMismatchError, match=r"visual_tokenizer.head.0.weight: checkpoint \(38, 32\) vs config "
                       r"\(62, 32\)"):
        OvisForCausalLM.from_pretrained(src)
    assert _leftovers(tmp_path, "out") == []
    _rewrite_json(src / "config.json", lambda c: c["visual_tokenizer_config"].update(vocab_size=V))
    _rewrite_json(src / "config.json", lambda c: c["llm_config"].update(num_hidden_layers=3))
    with pytest.raises(ShapeMismatchError, match="tensor.s. the config needs are missing, e.g. llm.model.layers.2"):
        convert(src, tmp_path / "out", to="ovis")


def test_an_unknown_conversation_formatter_class(v1_qwen, tmp_path, capsys):
    src = _clone(v1_qwen.path, tmp_path / "src")
    _rewrite_json(src / "config.json", lambda c: c.update(conversation_formatter_class="MadeUpConversationFormatter"))
    out = tmp_path / "out"
    assert main(["convert", str(src), "--from", "original", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "unknown conversation_formatter_class 'MadeUpConversationFormatter'" in err
    assert "Llama3ConversationFormatter -> llama3" in err and "QwenConversationFormatter -> chatml" in err
    assert _leftovers(tmp_path, "out") == []
    with pytest.raises(UnknownFormatterError):
        ovis.OvisProcessor.from_pretrained(src)


def test_a_failure_while_writing_leaves_nothing(ovis_dir, tmp_path, monkeypatch):
    import ovis.interop.original as original

    calls = []
    real_save = torch.save

    def failing_save(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(original.torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        convert(ovis_dir, tmp_path / "out", to="original", max_shard_size="200KB")
    assert len(calls) == 2 and _leftovers(tmp_path, "out") == []
    monkeypatch.undo()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        convert(ovis_dir, tmp_path / "out", to="original")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_convert_help_documents_the_formats(capsys):
    with pytest.raises(SystemExit):
        main(["convert", "--help"])
    text = capsys.readouterr().out
    for phrase in ("--from", "--to", "conversation_formatter_class", "pytorch_model-0000i-of-0000N.bin",
                   "clip_visual_tokenizer", "weights_only=True", "temporary"):
        assert phrase in text, phrase


def test_convert_refuses_an_out_that_holds_its_source(ovis_dir, tmp_path):
    """--overwrite would replace the directory the source is in, and the source with it."""
    import shutil

    from ovis.interop.conversion import convert

    parent = tmp_path / "par"
    source = shutil.copytree(ovis_dir, parent / "src")
    for to in ("original", "ovis2"):
        with pytest.raises(FileExistsError, match=r"--out .*par holds the source .*par/src; write to another"):
            convert(source, parent, to=to, overwrite=True)
    assert (source / "config.json").is_file()
