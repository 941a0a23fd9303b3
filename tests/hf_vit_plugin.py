"""A throwaway vision plugin wrapping transformers' ViTModel, which transformers 5 saves under other
names than its modules have (``encoder.layer.N.attention.attention.query`` for ``layers.N.attention.q_proj``),
as a third party would write one; and a variant whose files hold q, k and v fused in one tensor
(transformers splits it on load: more than a renaming); and a broken one that keeps its class token.
Used by tests/test_stored_names.py and tests/test_plugin_testing.py, also in spawned ranks
(:func:`register` adds it to the process-wide host)."""

from __future__ import annotations

import torch
from transformers import ViTConfig, ViTModel

from ovis.interfaces import ImagePreprocessSpec, VisionBackbone, VisionSpec, hookimpl


def _spec(name: str, builder: str) -> VisionSpec:
    return VisionSpec(
        name=name,
        family=builder,
        builder=builder,
        plugin="hf-vit-test",
        source="transformers",
        description="a 2-layer transformers ViTModel, random init (test plugin)",
        tiny=True,
        hidden_size=32,
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        has_cls_token=True,
        preprocess=ImagePreprocessSpec(image_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize="squash"),
    )


RENAMED = _spec("hf-vit-renamed", "hf-vit-renamed")
FUSED = _spec("hf-vit-fused", "hf-vit-fused")
KEEPS_CLS = _spec("hf-vit-keeps-cls", "hf-vit-keeps-cls")


class FusedQkvViTModel(ViTModel):
    """ViTModel whose checkpoints hold each layer's q, k and v as one ``attention.qkv`` tensor."""


def _register_fused_mapping() -> None:
    from transformers.conversion_mapping import USER_REGISTERED_MAPPINGS, register_checkpoint_conversion_mapping
    from transformers.core_model_loading import Chunk, WeightConverter

    if FusedQkvViTModel.__name__ in USER_REGISTERED_MAPPINGS:
        return
    fused = [
        WeightConverter(
            source_patterns=f"attention.qkv.{kind}",
            target_patterns=[f"attention.{p}_proj.{kind}" for p in "qkv"],
            operations=[Chunk(dim=0)],
        )
        for kind in ("weight", "bias")
    ]
    register_checkpoint_conversion_mapping(FusedQkvViTModel.__name__, fused)


class HFViT(VisionBackbone):
    """The ViT's patch features (the CLS token dropped); ``encoder`` is the transformers model."""

    model_class = ViTModel

    def __init__(self, spec: VisionSpec) -> None:
        super().__init__(spec)
        config = ViTConfig(
            hidden_size=spec.hidden_size,
            num_hidden_layers=spec.num_layers,
            num_attention_heads=spec.num_heads,
            intermediate_size=2 * spec.hidden_size,
            image_size=spec.image_size,
            patch_size=spec.patch_size,
        )
        self.encoder = self.model_class(config, add_pooling_layer=False)

    @classmethod
    def from_spec(cls, spec: VisionSpec, *, pretrained: bool = True) -> HFViT:
        return cls(spec)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.encoder(pixel_values=pixel_values).last_hidden_state[:, 1:]

    def blocks(self) -> torch.nn.ModuleList:
        return self.encoder.layers

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        if enabled:
            self.encoder.gradient_checkpointing_enable()
        else:
            self.encoder.gradient_checkpointing_disable()


class FusedHFViT(HFViT):
    model_class = FusedQkvViTModel


class KeepsClsViT(HFViT):
    """A plugin bug: the class token is not dropped (17 features for 16 patches)."""

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.encoder(pixel_values=pixel_values).last_hidden_state


class Plugin:
    @hookimpl
    def register_vision_backbones(self, register):
        register(RENAMED, HFViT)
        register(FUSED, FusedHFViT)
        register(KEEPS_CLS, KeepsClsViT)


def register() -> None:
    """Add the plugin to this process's host (a spawned rank's), once."""
    from ovis.plugin_host import get_host

    _register_fused_mapping()
    host = get_host()
    if "hf-vit-test" not in host.plugins:
        host.add_plugin("hf-vit-test", Plugin())
