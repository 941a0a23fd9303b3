"""Pydantic specs that describe a registered backbone.

A spec is plain data: it is what a preset file in ``registry/`` holds and what a plugin hands to
``register``. Every model is ``extra="forbid"`` so a misspelt field in a preset or a plugin fails at
registration, naming the field, instead of being silently ignored. Every field carries a
description: ``docs/plugin-spec-reference.md`` is generated from them
(``python -m ovis.interfaces.spec_reference --write docs/plugin-spec-reference.md``).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: the two kinds of registered backbone (chat formats are registered apart)
Kind = Literal["vision", "llm"]

_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImagePreprocessSpec(_Strict):
    """How an encoder wants its images: size, normalisation and the resize policy."""

    image_size: int = Field(
        gt=0, description="side of the square the encoder takes, in pixels; must equal the VisionSpec's image_size"
    )
    mean: tuple[float, float, float] = Field(
        default=CLIP_MEAN, description="per-channel mean subtracted from pixels scaled to [0, 1] (default: CLIP's)"
    )
    std: tuple[float, float, float] = Field(
        default=CLIP_STD, description="per-channel standard deviation, divided by after the mean; each > 0 "
        "(default: CLIP's)",
    )
    resize: Literal["pad", "crop", "squash"] = Field(
        default="pad",
        description="'pad': long side to image_size keeping the aspect ratio (short side rounded down), "
        "normalise, then zero-pad centred (Ovis v1 with CLIP); 'crop': short side to image_size, then "
        "centre crop (CLIP's own preprocessing); 'squash': resize straight to a square, ignoring the "
        "aspect ratio (SigLIP's)",
    )
    interpolation: Literal["bicubic", "bilinear"] = Field(
        default="bicubic", description="resampling filter used when resizing"
    )

    @field_validator("std")
    @classmethod
    def _positive_std(cls, std: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(s <= 0 for s in std):
            raise ValueError(f"every std must be > 0, got {std}")
        return std


class BackboneSpec(_Strict):
    """Fields shared by every registered backbone."""

    name: str = Field(
        pattern=_NAME_PATTERN,
        description="the name `--vit` / `--llm` take, unique across every plugin of this kind (lowercase "
        "letters, digits, '.', '_', '-'); a preset file must be named `<name>.yaml`",
    )
    aliases: list[str] = Field(
        default_factory=list,
        description="other names that resolve to this one; same characters as name, and unique across plugins too",
    )
    family: str = Field(description="the model family, free text shown by `ovis list` (e.g. 'clip', 'qwen2.5')")
    builder: str = Field(
        description="key of the class that builds it, e.g. 'hf-clip-vision'; a plugin reading presets "
        "registers those whose builder it implements. For a vision encoder it is saved in the model's "
        "config.json, and loading rebuilds the encoder with the class some installed plugin registered "
        "under the same builder"
    )
    plugin: str | None = Field(
        default=None,
        description="the distribution (pip package) that registers this spec, e.g. 'ovis-plugin-qwen'. "
        "Checked at registration: if it differs from the registering plugin's distribution the spec is "
        "refused and the mismatch is that plugin's error (`ovis plugins`). Also named in 'unknown name' "
        "errors when a registry preset's plugin is not installed. null: not checked",
    )
    weights: str | None = Field(
        default=None,
        description="where real weights come from: a hub id, an open_clip pretrained tag or a local "
        "directory ('./DIR' in a registry preset file: the directory DIR beside that file, weights "
        "shipped with the preset); null for a random-initialised model",
    )
    description: str = Field(default="", description="free text for people reading the preset")
    license: str | None = Field(default=None, description="licence of the weights (an SPDX id where one exists)")
    tiny: bool = Field(
        default=False,
        description="a random-init test size that builds offline in seconds; compose uses random "
        "weights for tiny presets unless told otherwise",
    )
    architecture: dict[str, Any] = Field(
        default_factory=dict,
        description="builder-specific architecture config: enough to build the model without "
        "downloading anything (random init or on the meta device)",
    )

    @field_validator("aliases")
    @classmethod
    def _alias_names(cls, aliases: list[str]) -> list[str]:
        for alias in aliases:
            if not re.match(_NAME_PATTERN, alias):
                raise ValueError(f"alias {alias!r} must be lowercase letters, digits, '.', '_' or '-'")
        return aliases


class VisionSpec(BackboneSpec):
    """A vision encoder: a ViT whose patch features feed the visual tokenizer."""

    kind: Literal["vision"] = Field(default="vision", description="always 'vision'; a preset file may state it")
    source: Literal["transformers", "open_clip", "timm", "other"] = Field(
        description="the library the encoder comes from ('other' for your own code); shown by `ovis list`"
    )
    hidden_size: int = Field(gt=0, description="width of the patch features it returns")
    image_size: int = Field(gt=0, description="side of the square input image, in pixels")
    patch_size: int = Field(
        gt=0,
        description="side of a patch in pixels; the encoder gives (image_size // patch_size)² patches "
        "(a remainder is dropped, as SigLIP so400m/14 at 384 px does)",
    )
    num_layers: int = Field(gt=0, description="transformer blocks (what blocks() returns)")
    num_heads: int = Field(gt=0, description="attention heads per block")
    has_cls_token: bool = Field(
        default=True,
        description="whether the wrapped encoder emits a CLS/prefix token; forward() drops it either way",
    )
    preprocess: ImagePreprocessSpec = Field(description="how images are turned into its pixel values")

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

    kind: Literal["llm"] = Field(default="llm", description="always 'llm'; a preset file may state it")
    source: Literal["transformers", "other"] = Field(
        default="transformers",
        description="'transformers' for a transformers causal LM (what HFCausalLM builds), 'other' otherwise",
    )
    hidden_size: int = Field(
        gt=0, description="width of the token embeddings; the visual embedding table gets this width"
    )
    num_layers: int = Field(gt=0, description="decoder layers")
    vocab_size: int = Field(
        gt=0,
        description="rows of the model's input embedding table (its config's vocab_size); may exceed "
        "the tokenizer's length, as padded vocabularies do",
    )
    context_length: int = Field(
        gt=0,
        description="longest sequence the model takes, in tokens; compose caps the multimodal max "
        "length at min(2048, context_length) by default",
    )
    chat_format: str = Field(
        description="name of a registered chat format, e.g. 'llama3', 'chatml'. Saved with the model: "
        "loading looks it up again, so the plugin that registers it must be installed where the "
        "model is loaded"
    )
    tokenizer: str = Field(
        description="what build_tokenizer() reads: a hub id or local directory, or 'offline:<name>' for "
        "one the plugin builds without network access. build_tokenizer() runs once, when the model is "
        "composed: the tokenizer (chat template included) is saved into the model directory and "
        "loading reads it from there with AutoTokenizer, without calling the plugin. "
        "`ovis compose --llm-weights DIR` replaces it with DIR"
    )
    conversation_formatter_class: str | None = Field(
        default=None, description="the Ovis v1 formatter name this chat format corresponds to"
    )
    architecture: dict[str, Any] = Field(
        default_factory=dict,
        description="for HFCausalLM (any transformers causal LM): the transformers config. "
        "`model_type` (a transformers model type, e.g. 'llama', 'qwen2') is required and every other "
        "key goes to `AutoConfig.for_model(model_type, **rest)`, so anything not given takes "
        "transformers' default for that model type. It must repeat hidden_size, num_layers (as "
        "num_hidden_layers) and vocab_size with the spec's values: the build fails if they differ. "
        "Give heads, intermediate size, token ids, RoPE settings and tie_word_embeddings too. The "
        "config built from it is saved in the model's config.json, so loading does not call the plugin",
    )
