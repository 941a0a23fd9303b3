"""The composer, from Python and from the command line, and ``--dry-run`` at full scale."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import ovis
from ovis.cli import main
from ovis.composer import WeightsUnavailableError
from ovis.errors import UsageError
from ovis.plugin_host import UnknownNameError, get_host

TINY_VITS = sorted(e.spec.name for e in get_host().list("vision") if e.spec.tiny and e.plugin.startswith("ovis-plugin"))
TINY_LLMS = sorted(e.spec.name for e in get_host().list("llm") if e.spec.tiny)


def _ask(model, processor, image):
    batch = processor([[{"role": "user", "content": "<image> What shape is it?"}]], [[image]])
    return model.generate(**{k: v for k, v in batch.items() if k != "labels"}, max_new_tokens=4, do_sample=False)


def test_python_and_cli_compose_write_the_same_model(tmp_path):
    model, processor = ovis.compose(vit="clip-tiny", llm="qwen2.5-tiny", out=tmp_path / "py", visual_vocab_size=1024)
    assert main(["compose", "--vit", "clip-tiny", "--llm", "qwen2.5-tiny", "--out", str(tmp_path / "cli"),
                 "--visual-vocab-size", "1024"]) == 0
    for name in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"):
        assert (tmp_path / "py" / name).is_file() and (tmp_path / "cli" / name).is_file(), name
    py_config = json.loads((tmp_path / "py" / "config.json").read_text())
    cli_config = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert py_config == cli_config
    assert py_config["model_type"] == "ovis" and py_config["chat_format"] == "qwen2.5"
    loaded, loaded_processor = ovis.load(tmp_path / "py")
    image = Image.new("RGB", (50, 40), "red")
    torch.testing.assert_close(
        _ask(model.eval(), processor, image), _ask(loaded.eval(), loaded_processor, image), rtol=0, atol=0
    )


@pytest.mark.parametrize("vit", TINY_VITS)
def test_every_tiny_encoder_composes_trains_and_generates(vit):
    model, processor = ovis.compose(vit=vit, llm="qwen2.5-tiny", visual_vocab_size=512)
    _forward_backward_generate(model, processor)


@pytest.mark.parametrize("llm", TINY_LLMS)
def test_every_tiny_llm_composes_trains_and_generates(llm):
    model, processor = ovis.compose(vit="clip-tiny", llm=llm, visual_vocab_size=512)
    _forward_backward_generate(model, processor)


def _forward_backward_generate(model, processor):
    image = Image.new("RGB", (64, 48), "blue")
    sample = processor.encode(
        [{"role": "user", "content": "<image> What colour?"}, {"role": "assistant", "content": "Blue."}], [image]
    )
    batch = processor.collate([sample])
    model.train()
    loss = model(**batch).loss
    assert torch.isfinite(loss)
    loss.backward()
    assert model.visual_tokenizer.head[0].weight.grad.abs().sum() > 0
    assert model.backbone.blocks()[0].parameters().__next__().grad is not None
    model.eval()
    new = _ask(model, processor, image)
    assert new.shape == (1, 4) or (new.shape[0] == 1 and new.shape[1] <= 4)


# The released v1 checkpoints' shapes (shared/ovis-v1-reference.md): head 1024 -> 131070, VTE 131072 x hidden.
SEED_MODELS = [
    ("llama3-8b", 4096, 8_030_261_248),
    ("qwen1.5-7b", 4096, None),
    ("qwen1.5-14b", 5120, None),
]


@pytest.mark.parametrize(("llm", "hidden", "llm_params"), SEED_MODELS)
def test_dry_run_builds_the_seed_models_with_the_released_shapes(llm, hidden, llm_params, capsys):
    assert main(["compose", "--vit", "clip", "--llm", llm, "--dry-run", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    parts = report["parts"]
    assert parts["visual_tokenizer.head"]["shapes"] == "(131070, 1024) -> (131070,) -> (131070,)"
    assert parts["visual_tokenizer.head"]["parameters"] == 1024 * 131070 + 2 * 131070
    assert parts["vte"]["shapes"] == f"(131072, {hidden})"
    assert parts["visual_tokenizer.backbone"]["parameters"] == 303_507_456  # HF CLIP ViT-L/14-336 tower
    assert report["num_image_tokens"] == 578
    if llm_params:
        assert parts["llm"]["parameters"] == llm_params
    model, processor = ovis.compose(vit="clip", llm=llm, dry_run=True)
    assert processor is None and model.vte.weight.device.type == "meta"
    names = set(model.state_dict())
    for key in ("visual_tokenizer.backbone.vision_model.embeddings.patch_embedding.weight",
                "visual_tokenizer.backbone.vision_model.pre_layrnorm.weight",
                "visual_tokenizer.backbone.vision_model.encoder.layers.23.self_attn.q_proj.weight",
                "visual_tokenizer.head.0.weight", "visual_tokenizer.head.1.bias", "vte.weight",
                "llm.model.layers.0.self_attn.q_proj.weight", "llm.lm_head.weight"):
        assert key in names, key


def test_unknown_names_fail_with_suggestions(capsys):
    with pytest.raises(UnknownNameError, match="Did you mean 'clip-tiny'"):
        ovis.compose(vit="clip-tiyn", llm="qwen2.5-tiny")
    assert main(["compose", "--vit", "clip", "--llm", "lama3-8b", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "unknown LLM 'lama3-8b'" in err and "llama3-8b" in err and "plugin ovis-plugin-llama" in err


def test_real_weights_unavailable_offline_say_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hint = r"\(--vit-weights DIR\) or compose with random weights \(--random-init\)"
    with pytest.raises(WeightsUnavailableError, match=hint):
        ovis.compose(vit="clip-vit-l-14-336", llm="qwen2.5-tiny", pretrained=True)


def test_out_is_written_atomically_and_never_clobbered(tmp_path, monkeypatch):
    out = tmp_path / "model"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        ovis.compose(vit="clip-tiny", llm="qwen2.5-tiny", out=out, visual_vocab_size=64)
    assert (out / "precious.txt").read_text() == "keep me"

    from ovis.processing import OvisProcessor

    def broken_save(self, directory):
        raise OSError("disk full")

    monkeypatch.setattr(OvisProcessor, "save_pretrained", broken_save)
    target = tmp_path / "fresh"
    with pytest.raises(OSError, match="disk full"):
        ovis.compose(vit="clip-tiny", llm="qwen2.5-tiny", out=target, visual_vocab_size=64)
    assert not target.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".fresh")]  # no temp left over


def test_a_backbone_whose_width_disagrees_with_its_spec_is_named():
    model, _ = ovis.compose(vit="clip-tiny", llm="qwen2.5-tiny", visual_vocab_size=64)
    original = model.backbone.forward
    model.backbone.forward = lambda pixels: original(pixels)[..., :-1]
    with pytest.raises(ValueError, match="'clip-tiny' returned features of width 63.*expect 64"):
        model.encode_images(torch.zeros(1, 3, 64, 64))


def test_a_backbone_that_keeps_its_class_token_is_named():
    model, _ = ovis.compose(vit="clip-tiny", llm="qwen2.5-tiny", visual_vocab_size=64)
    original = model.backbone.forward
    model.backbone.forward = lambda pixels: torch.cat([original(pixels)[:, :1], original(pixels)], dim=1)
    with pytest.raises(ValueError, match=r"'clip-tiny' returned features of shape \[1, 17, 64\].*\[images, 16, 64\]"):
        model.encode_images(torch.zeros(1, 3, 64, 64))


def test_weights_named_for_a_weightless_preset_are_loaded(tmp_path):
    # clip-tiny names no weights (a random-init preset): --vit-weights DIR must load DIR, not be
    # recorded in config.json while random weights are built.
    from transformers import CLIPVisionConfig, CLIPVisionModel

    spec = ovis.get_host().vision("clip-tiny").spec
    torch.manual_seed(123)
    saved = CLIPVisionModel(CLIPVisionConfig(**spec.architecture))
    saved.save_pretrained(tmp_path / "vit")
    model, _ = ovis.compose(vit="clip-tiny", llm="qwen2.5-tiny", vit_weights=str(tmp_path / "vit"),
                            visual_vocab_size=64)
    loaded = dict(model.visual_tokenizer.backbone.named_parameters())
    suffix = "encoder.layers.0.self_attn.q_proj.weight"
    got = next(v for k, v in loaded.items() if k.endswith(suffix))
    expected = next(v for k, v in saved.state_dict().items() if k.endswith(suffix))
    assert torch.equal(got, expected)
    with pytest.raises(UsageError, match="--vit-weights .* random weights"):
        ovis.compose(vit="clip-tiny", llm="qwen2.5-tiny", vit_weights=str(tmp_path / "vit"), pretrained=False)


def test_written_directories_follow_the_umask(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        out = tmp_path / "model"
        ovis.compose(vit="clip-tiny", llm="qwen2.5-tiny", out=out, visual_vocab_size=64)
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o755


def test_a_chat_format_chosen_instead_of_the_presets(tmp_path):
    """Ovis2 prompts Qwen2.5 with chatml (QwenConversationFormatter), not Qwen2.5's own prompt: the
    composer takes another chat format of the LLM's family, and refuses one of another family."""
    from ovis.composer import compose
    from ovis.errors import ConfigError

    model, processor = compose("aimv2-tiny", "qwen2.5-tiny", chat_format="chatml", max_partition=4, hidden_stride=2,
                               visual_vocab_size=64)
    assert model.config.chat_format == "chatml" and processor.chat_format.name == "chatml"
    assert model.config.conversation_formatter_class == "QwenConversationFormatter"
    own, _ = compose("aimv2-tiny", "qwen2.5-tiny", visual_vocab_size=64, dry_run=True)
    assert own.config.chat_format == "qwen2.5" and own.config.conversation_formatter_class is None
    with pytest.raises(ConfigError, match=r"chat format 'llama3' ends turns with '<\|eot_id\|>'.*not one token"):
        compose("clip-tiny", "qwen2.5-tiny", chat_format="llama3", visual_vocab_size=64)


def test_weights_named_by_a_path_that_is_not_there_or_holds_pickles_are_refused_clearly(tmp_path, capsys):
    from ovis.cli import main

    assert main(["compose", "--vit", "clip-tiny", "--llm", "qwen2.5-tiny", "--vit-weights", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "m")]) == 2
    assert f"--vit-weights {tmp_path / 'nope'}: no such file or directory" in capsys.readouterr().err
    pickled = tmp_path / "llm"
    pickled.mkdir()
    (pickled / "pytorch_model.bin").write_bytes(b"not to be unpickled")
    assert main(["compose", "--vit", "clip-tiny", "--llm", "qwen2.5-tiny", "--llm-weights", str(pickled),
                 "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "holds only pickle weights (pytorch_model.bin), which are not loaded" in err
    assert "weights_only=False" not in err and not (tmp_path / "m").exists()


def test_a_max_length_below_one_is_refused_not_replaced(tmp_path, capsys):
    from ovis.cli import main
    from ovis.errors import ConfigError

    for value in (0, -5):
        with pytest.raises(ConfigError, match=f"multimodal_max_length must be a whole number >= 1, got {value}"):
            ovis.compose(vit="clip-tiny", llm="qwen2.5-tiny", visual_vocab_size=64, multimodal_max_length=value)
    with pytest.raises(SystemExit):
        main(["compose", "--vit", "clip-tiny", "--llm", "qwen2.5-tiny", "--max-length", "0", "--out", str(tmp_path)])
    assert "expected a positive integer (1 or more), got 0" in capsys.readouterr().err
    for option in ("--train-images", "--eval-images", "--curve-questions"):
        with pytest.raises(SystemExit):
            main(["quickstart", "--out", str(tmp_path / "q"), option, "0"])
        assert "expected a positive integer (1 or more), got 0" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()
