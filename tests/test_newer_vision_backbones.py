"""AIMv2 and SigLIP2 (the Ovis2 / Ovis2.5 vision backbones) against transformers' own models.

The plugin's backbones wrap transformers' ``Aimv2VisionModel`` / ``Siglip2VisionModel`` but call
their parts themselves (to stop before the final norm, and to feed NaFlex fixed squares); here a
separately built transformers model with the same weights, called the way transformers documents
it, must give the same features at float32. The contract tests, local loading and full-size
parameter counts of these presets are in ``test_vision_backbones.py``.
"""

from __future__ import annotations

import pytest
import torch
from transformers import Aimv2VisionConfig, Aimv2VisionModel, Siglip2VisionConfig, Siglip2VisionModel
from transformers.models.siglip2.image_processing_siglip2 import convert_image_to_patches

from ovis.plugin_host import PluginHost

HOST = PluginHost()


def _plugin_model(name: str, seed: int = 0):
    entry = HOST.vision(name)
    torch.manual_seed(seed)
    return entry.factory.from_spec(entry.spec, pretrained=False).eval()


def _reference(model_cls, config_cls, ours):
    """A transformers model built on its own from the preset's config, holding our weights."""
    reference = model_cls(config_cls(**ours.spec.architecture)).eval()
    state = {k.removeprefix("vision_model."): v for k, v in ours.state_dict().items()}
    reference.load_state_dict(state)
    return reference


def test_aimv2_features_equal_transformers_hidden_states():
    ours = _plugin_model("aimv2-tiny")
    reference = _reference(Aimv2VisionModel, Aimv2VisionConfig, ours)
    with torch.no_grad():
        for p in ours.parameters():  # norms start at exactly 1; make every weight count
            p.add_(0.05 * torch.randn_like(p))
        reference.load_state_dict({k.removeprefix("vision_model."): v for k, v in ours.state_dict().items()})
        pixels = torch.randn(3, 3, 64, 64)
        features = ours(pixels)
        out = reference(pixel_values=pixels, output_hidden_states=True)
    assert features.shape == (3, 16, 64)
    # Ovis2 takes the last block's output (hidden_states[-1]), before the trunk's final RMSNorm ...
    torch.testing.assert_close(features, out.hidden_states[-1], rtol=1e-6, atol=1e-6)
    # ... which transformers' last_hidden_state applies: the norm of our features, and not them.
    with torch.no_grad():
        torch.testing.assert_close(ours.final_norm(features), out.last_hidden_state, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(features, out.last_hidden_state, atol=1e-3)
    assert out.pooler_output is None, "the released encoders have no pooling head (use_head: false)"


def test_to_patches_is_transformers_naflex_layout():
    from ovis_hf_vision.siglip2 import to_patches

    images = torch.randn(2, 3, 48, 32)
    ours = to_patches(images, 16)
    for i in range(2):
        assert torch.equal(ours[i], convert_image_to_patches(images[i], 16))
    # a remainder beyond whole patches is dropped, as a patch convolution drops it
    assert to_patches(torch.randn(1, 3, 50, 35), 16).shape == (1, 3 * 2, 16 * 16 * 3)


def test_siglip2_naflex_features_equal_transformers_with_its_own_inputs():
    """siglip2-tiny's 3 x 3 position table is resized to the 4 x 4 grid, as NaFlex does."""
    ours = _plugin_model("siglip2-tiny")
    assert ours.vision_model.config.num_patches == 9 and ours.num_patches == 16
    reference = _reference(Siglip2VisionModel, Siglip2VisionConfig, ours)
    pixels = torch.randn(2, 3, 64, 64)
    patches = torch.stack([convert_image_to_patches(image, 16) for image in pixels])
    # transformers' inputs for two 64 px squares padded to 20 patches: the mask marks the 16 real ones
    padded = torch.cat([patches, torch.randn(2, 4, patches.shape[-1])], dim=1)
    mask = torch.cat([torch.ones(2, 16, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long)], dim=1)
    shapes = torch.tensor([[4, 4], [4, 4]])
    with torch.no_grad():
        features = ours(pixels)
        out = reference(
            pixel_values=padded, pixel_attention_mask=mask, spatial_shapes=shapes, output_hidden_states=True
        )
        unpadded = reference(
            pixel_values=patches,
            pixel_attention_mask=torch.ones(2, 16, dtype=torch.long),
            spatial_shapes=shapes,
            output_hidden_states=True,
        )
    assert features.shape == (2, 16, 64)
    torch.testing.assert_close(features, out.hidden_states[-1][:, :16], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(features, unpadded.hidden_states[-1], rtol=1e-6, atol=1e-6)
    # before post_layernorm: transformers' last_hidden_state is the normed one
    torch.testing.assert_close(
        ours.vision_model.post_layernorm(features), unpadded.last_hidden_state, rtol=1e-6, atol=1e-6
    )


def test_siglip2_fixres_preset_is_a_siglip_model():
    """google/siglip2-*-patch16-512 checkpoints are SigLIP-architecture models (model_type siglip)."""
    from transformers import SiglipVisionModel

    spec = HOST.vision("siglip2").spec
    assert spec.name == "siglip2-so400m-patch16-512" and spec.builder == "hf-siglip-vision"
    with torch.device("meta"):
        model = HOST.vision(spec.name).factory.from_spec(spec, pretrained=False)
    assert type(model.vision_model) is SiglipVisionModel
    assert model.vision_model.config.image_size == 512 and model.num_patches == 1024


def test_siglip2_resizes_its_table_for_a_spec_with_another_resolution():
    """The same NaFlex weights at a larger square: a 6 x 6 grid from the 3 x 3 table."""
    entry = HOST.vision("siglip2-tiny")
    spec = entry.spec.model_copy(
        update={"image_size": 96, "preprocess": entry.spec.preprocess.model_copy(update={"image_size": 96})}
    )
    torch.manual_seed(0)
    ours = entry.factory.from_spec(spec, pretrained=False).eval()
    reference = _reference(Siglip2VisionModel, Siglip2VisionConfig, ours)
    pixels = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        features = ours(pixels)
        out = reference(
            pixel_values=convert_image_to_patches(pixels[0], 16)[None],
            pixel_attention_mask=torch.ones(1, 36, dtype=torch.long),
            spatial_shapes=torch.tensor([[6, 6]]),
            output_hidden_states=True,
        )
    assert features.shape == (1, 36, 64)
    torch.testing.assert_close(features, out.hidden_states[-1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["aimv2-tiny", "siglip2-tiny"])
def test_bf16_forward_runs(name):
    model = _plugin_model(name).to(torch.bfloat16)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_aimv2_large_preset_is_transformers_default_config_at_448():
    """Aimv2VisionConfig's defaults describe apple/aimv2-large-patch14-224 (its docstring), and
    Ovis2VisionConfig's trunk defaults are the same encoder: the preset differs only in image size
    and in having no pooling head."""
    from transformers import Ovis2VisionConfig

    arch = HOST.vision("aimv2-large").spec.architecture
    default = Aimv2VisionConfig()
    differs = {k for k, v in arch.items() if getattr(default, k) != v}
    assert differs == {"image_size", "use_head"} and (default.image_size, default.use_head) == (224, True)
    ovis2 = Ovis2VisionConfig()
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "patch_size"):
        assert getattr(ovis2, key) == arch[key], key
