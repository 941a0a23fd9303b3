"""Pydantic specs that describe a registered backbone.

A spec is plain data: it is what a preset file in ``registry/`` holds and what a plugin hands to
``register``. Every model is ``extra="forbid"`` so a misspelt field in a preset or a plugin fails at
registration, naming the field, instead of being silently ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImagePreprocessSpec(_Strict):
    """How an encoder wants its images: size, normalisation and the resize policy.

    ``resize`` policies:
      * ``pad``: keep the aspect ratio, long side to ``image_size`` (the short side rounded down),
        normalise, then zero-pad centred (exactly what Ovis v1 did for CLIP).
      * ``crop``: short side to ``image_size``, then centre crop (CLIP's own preprocessing).
      * ``squash``: resize straight to a square, ignoring the aspect ratio (SigLIP's).
    """

    image_size: int = Field(gt=0)
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    resize: Literal["pad", "crop", "squash"] = "pad"
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"

    @field_validator("std")
    @classmethod
    def _positive_std(cls, std: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(s <= 0 for s in std):
            raise ValueError(f"every std must be > 0, got {std}")
        return std


class BackboneSpec(_Strict):
    """Fields shared by every registered backbone."""

    name: str = Field(pattern=_NAME_PATTERN)
    aliases: list[str] = Field(default_factory=list)
    family: str
    builder: str = Field(description="key of the factory that builds it, e.g. 'hf-clip-vision'")
    plugin: str | None = Field(default=None, description="distribution that provides the builder")
    weights: str | None = Field(
        default=None,
        description="where real weights come from: a hub id, an open_clip pretrained tag or a local "
        "directory; None for a random-initialised model",
    )
    description: str = ""
    license: str | None = None
    tiny: bool = Field(default=False, description="random-init, builds offline in seconds")
    architecture: dict[str, Any] = Field(
        default_factory=dict,
        description="builder-specific architecture config: enough to build the model without "
        "downloading anything (random init or on the meta device)",
    )

    @field_validator("aliases")
    @classmethod
    def _alias_names(cls, aliases: list[str]) -> list[str]:
        import re

        for alias in aliases:
            if not re.match(_NAME_PATTERN, alias):
                raise ValueError(f"alias {alias!r} must be lowercase letters, digits, '.', '_' or '-'")
        return aliases


class VisionSpec(BackboneSpec):
    """A vision encoder: a ViT whose patch features feed the visual tokenizer."""

    kind: Literal["vision"] = "vision"
    source: Literal["transformers", "open_clip", "timm", "other"]
    hidden_size: int = Field(gt=0, description="width of the patch features it returns")
    image_size: int = Field(gt=0)
    patch_size: int = Field(gt=0)
    num_layers: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    has_cls_token: bool = True
    preprocess: ImagePreprocessSpec

    @model_validator(mode="after")
    def _consistent(self) -> VisionSpec:
        # Not required to be a multiple: the patch convolution drops the remainder, as in SigLIP
        # so400m/14 at 384 px (27 x 27 = 729 patches).
        if self.image_size < self.patch_size:
            raise ValueError(f"image_size {self.image_size} is smaller than patch_size {self.patch_size}")
        if self.preprocess.image_size != self.image_size:
            raise ValueError(
                f"preprocess.image_size {self.preprocess.image_size} != image_size {self.image_size}"
            )
        return self

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class LLMSpec(BackboneSpec):
    """A causal language model with its tokenizer and chat format."""

    kind: Literal["llm"] = "llm"
    source: Literal["transformers", "other"] = "transformers"
    hidden_size: int = Field(gt=0)
    num_layers: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    context_length: int = Field(gt=0)
    chat_format: str = Field(description="name of a registered chat format, e.g. 'llama3', 'chatml'")
    tokenizer: str = Field(
        description="where the tokenizer comes from: a hub id or local directory, or "
        "'offline:<name>' for one the plugin builds without network access"
    )
    conversation_formatter_class: str | None = Field(
        default=None, description="the Ovis v1 formatter name this chat format corresponds to"
    )
