"""``OvisForCausalLM``: a visual tokenizer and a visual embedding table in front of an LLM."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from ovis.errors import ConfigError
from ovis.interfaces import VisionBackbone, VisionSpec
from ovis.model.configuration_ovis import OvisConfig, merged_tokens
from ovis.model.directory_check import check_missing_weights, check_model_directory, check_tensor_shapes
from ovis.model.merging import (
    IMAGE_TOKEN_ID,
    indicator_mask,
    merge_image_embeddings,
    merge_indicator_embeddings,
)
from ovis.model.ovis2_format import (
    HfOvis2Checkpoint,
    is_hf_ovis2_checkpoint,
    read_hf_configs,
    state_from_hf,
    translate_hf_config,
)
from ovis.model.ovis2_release_format import (
    ReleaseCheckpoint,
    is_release_checkpoint,
    state_from_release,
    translate_release_config,
)
from ovis.model.stored_names import StoredNames, stored_to_model
from ovis.model.v1_format import (
    ConversionError,
    checkpoint_format,
    is_original_checkpoint,
    read_config,
    read_preprocessor,
    translate_config,
)
from ovis.model.v1_weights import OriginalCheckpoint, check_state_dict, read_state_dict, state_dtype
from ovis.model.visual_embedding import VisualEmbedding, wrap_with_indicators
from ovis.model.visual_path import fused_visual_embed, topk_visual_embed
from ovis.model.visual_tokenizer import VisualTokenizer
from ovis.plugin_host import get_host

logger = logging.getLogger("ovis.model")


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def _check_local_directory(path: Any, kwargs: dict[str, Any]) -> dict | None:
    """Check a local model directory before transformers reads it (see :mod:`ovis.model.directory_check`):
    its safetensors shapes by file for an ovis-format directory, ``None`` for anything else (a v1
    checkpoint, a hub id, weights passed in ``state_dict``)."""
    if path is None or kwargs.get("state_dict") is not None or not isinstance(path, (str, Path)):
        return None
    if not Path(path).exists() and _HUB_ID.match(str(path)) and not Path(path).is_absolute():
        return None  # not here: a hub repo id, left to transformers
    return check_model_directory(path)


def build_backbone(spec: dict[str, Any] | VisionSpec) -> VisionBackbone:
    """Rebuild a saved model's encoder (random init) through the plugin that provides its builder."""
    spec = spec if isinstance(spec, VisionSpec) else VisionSpec.model_validate(spec)
    return get_host().vision_factory(spec.builder, plugin=spec.plugin).from_spec(spec, pretrained=False)


class OvisPreTrainedModel(PreTrainedModel):
    config_class = OvisConfig
    base_model_prefix = "ovis"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _skip_keys_device_placement = "past_key_values"

    def _init_weights(self, module: torch.nn.Module) -> None:
        # Only ovis' own layers: the LLM and the encoder keep their own initialisation.
        if isinstance(module, VisualEmbedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=self.config.vte_init_std)
        elif isinstance(module, VisualTokenizer):
            for layer in module.head:
                if hasattr(layer, "reset_parameters"):
                    layer.reset_parameters()


class OvisForCausalLM(OvisPreTrainedModel):
    """The Ovis model. Build one with :func:`ovis.compose`, or load with ``from_pretrained``.

    ``llm`` and ``backbone`` may be passed already built (the composer does); otherwise they
    are rebuilt from the config, randomly initialised, ready for weights to be loaded.
    """

    def __init__(
        self,
        config: OvisConfig,
        llm: PreTrainedModel | None = None,
        backbone: VisionBackbone | None = None,
    ) -> None:
        super().__init__(config)
        self.llm = llm if llm is not None else AutoModelForCausalLM.from_config(config.llm_config)
        if backbone is None:
            backbone = build_backbone(config.vision_spec)
        hidden = config.llm_config.hidden_size
        stride = getattr(config, "hidden_stride", 1)
        if stride > 1 and math.isqrt(backbone.num_patches) ** 2 != backbone.num_patches:
            raise ConfigError(
                f"hidden_stride {stride} merges a square grid of patches, but vision backbone "
                f"{backbone.spec.name!r} yields {backbone.num_patches} patches; use hidden_stride 1"
            )
        self.visual_tokenizer = VisualTokenizer(
            backbone,
            adapter=config.adapter,
            visual_vocab_size=config.visual_vocab_size,
            hidden_size=hidden,
            use_indicators=config.use_indicators,
            tokenize_function=config.tokenize_function,
            tau=config.tau,
            num_indicators=config.num_indicators,
            hidden_stride=getattr(config, "hidden_stride", 1),
        )
        rows = config.visual_vocab_size if config.adapter == "structural" else max(2, config.num_indicators)
        self.vte = VisualEmbedding(rows, hidden)
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args: Any, **kwargs: Any):
        """Load an ovis model directory, an original Ovis v1 checkpoint directory, a transformers Ovis2
        (hf-ovis2) directory or an AIDC-AI Ovis2 release directory (their config is translated and their
        weights checked on load; a warning lists what was mapped)."""
        path = pretrained_model_name_or_path
        if kwargs.get("state_dict") is None and (is_hf_ovis2_checkpoint(path) or is_release_checkpoint(path)):
            read = read_hf_ovis2 if is_hf_ovis2_checkpoint(path) else read_release
            checkpoint = read(pretrained_model_name_or_path)
            kwargs.pop("config", None)
            model = super().from_pretrained(
                None, *model_args, config=checkpoint.config, state_dict=checkpoint.state, **kwargs
            )
            logger.warning(checkpoint.message(pretrained_model_name_or_path))
            return model
        shapes = _check_local_directory(pretrained_model_name_or_path, kwargs)
        if shapes is not None:
            config = kwargs.get("config")
            if not isinstance(config, OvisConfig):
                config = kwargs["config"] = OvisConfig.read(pretrained_model_name_or_path)
            cls.check_stored_tensors(config, shapes, pretrained_model_name_or_path)
        if not is_original_checkpoint(pretrained_model_name_or_path):
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        checkpoint = read_original(pretrained_model_name_or_path)
        kwargs.pop("config", None)
        model = super().from_pretrained(
            None, *model_args, config=checkpoint.config, state_dict=checkpoint.state, **kwargs
        )
        logger.warning(checkpoint.message(pretrained_model_name_or_path))
        return model

    @classmethod
    def check_stored_tensors(
        cls, config: OvisConfig, shapes: Mapping[str, Mapping[str, list[int]]], directory: str | Path
    ) -> StoredNames:
        """Check a directory's tensors (``shapes``, per file, as ``check_model_directory`` gives them)
        against a model built from ``config`` (on the meta device: no memory), each under the name the
        model loads it as: every shape as the model's, and no weight of the model missing. Returns
        those names."""
        with torch.device("meta"):
            model = cls(config)
        stored = [name for tensors in shapes.values() for name in tensors]
        names = stored_to_model(model, stored)
        expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
        check_tensor_shapes(shapes, expected, directory, renamed=names.renamed)
        if not names.converted:  # (a converted tensor's model names show only after its conversion)
            aliases: dict[int, list[str]] = {}
            for name, param in model.named_parameters(remove_duplicate=False):
                aliases.setdefault(id(param), []).append(name)
            check_missing_weights(list(aliases.values()), set(stored), directory, renamed=names.renamed)
        return names

    # -- pieces ----------------------------------------------------------------------------------
    @property
    def backbone(self) -> VisionBackbone:
        return self.visual_tokenizer.backbone

    @property
    def tiled(self) -> bool:
        """Whether images come in the tiled layout (``ovis.tiling``) rather than v1's one square."""
        return getattr(self.config, "image_layout", "v1") == "tiled"

    @property
    def tokens_per_tile(self) -> int:
        """Visual tokens per view (a v1 image, or one tile), indicators not counted."""
        stride = self.visual_tokenizer.hidden_stride
        patches = self.backbone.num_patches
        return patches if stride == 1 else merged_tokens(math.isqrt(patches), stride)

    @property
    def num_image_tokens(self) -> int:
        """Positions of a v1 image block (tokens + begin/end indicators)."""
        return self.tokens_per_tile + (2 if self.config.use_indicators else 0)

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.llm.get_input_embeddings()

    def set_input_embeddings(self, value: torch.nn.Module) -> None:
        self.llm.set_input_embeddings(value)

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.llm.get_output_embeddings()

    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs: dict | None = None, **kwargs: Any
    ) -> None:
        """Recompute activations in the backward pass, in the LLM and in the vision encoder."""
        self.llm.activation_checkpointing_enable(activation_checkpointing_kwargs, **kwargs)
        self.backbone.set_gradient_checkpointing(True)

    def activation_checkpointing_disable(self) -> None:
        self.llm.activation_checkpointing_disable()
        self.backbone.set_gradient_checkpointing(False)

    @property
    def is_activation_checkpointing(self) -> bool:
        return self.llm.is_activation_checkpointing

    # -- the visual path ---------------------------------------------------------------------------
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[num_images, 3, S, S]`` -> ``[num_images, num_image_tokens, hidden]``; in the tiled
        layout ``[num_views, 3, S, S]`` -> ``[num_views, tokens_per_tile, hidden]`` (no indicators:
        they have their own positions, see :meth:`indicator_embeddings`)."""
        pixel_values = pixel_values.to(device=self.vte.weight.device, dtype=self._vision_dtype())
        wrap = self.config.use_indicators and not self.tiled
        if self._lean_visual_path():
            embeds = self._embed_patches(self.visual_tokenizer.features(pixel_values))
        else:
            tokens = self.visual_tokenizer(pixel_values)
            if self.config.adapter == "structural":
                embeds = self.vte.embed_distributions(tokens, wrap)
            elif wrap:
                embeds = wrap_with_indicators(tokens, self.vte.weight[0], self.vte.weight[1])
            else:
                embeds = tokens
        return self._scale_visual(embeds)

    def _scale_visual(self, embeds: torch.Tensor) -> torch.Tensor:
        # The LLM scales its text rows inside its embedding module (Gemma); visual rows get the same.
        # Rounded to the rows' dtype first, as Gemma rounds its own factor (sqrt(3584) is 59.87 in
        # float32, 59.75 in bfloat16): the visual rows must be scaled exactly as the text rows are.
        scale = getattr(self.config, "visual_embedding_scale", 1.0)
        return embeds if scale == 1.0 else embeds * torch.tensor(scale, dtype=embeds.dtype)

    def indicator_embeddings(self) -> torch.Tensor:
        """The tiled layout's five indicator rows ``[5, hidden]``: the table's last five rows (the
        first five for the MLP adapter, whose table holds nothing else)."""
        weight = self.vte.weight
        rows = weight[-5:] if self.config.adapter == "structural" else weight[:5]
        return self._scale_visual(rows)

    def _lean_visual_path(self) -> bool:
        config = self.config
        return (
            config.adapter == "structural"
            and config.tokenize_function == "softmax"
            and getattr(config, "visual_path", "fused") == "fused"
        )

    def _embed_patches(self, features: torch.Tensor) -> torch.Tensor:
        """Patch features -> embeddings through the fused (or, in inference, top-k) visual path."""
        linear, norm = self.visual_tokenizer.head
        args = (features, linear.weight, norm.weight, norm.bias, self.vte.weight)
        kwargs = {
            "eps": norm.eps,
            "use_indicators": self.config.use_indicators and not self.tiled,
            "indicator_rows": self.config.num_indicators,
            "chunk_rows": getattr(self.config, "visual_chunk_rows", None),
        }
        topk = getattr(self.config, "visual_topk", None)
        if topk is not None and not self.training and not torch.is_grad_enabled():
            return topk_visual_embed(*args, topk, **kwargs)
        return fused_visual_embed(*args, **kwargs)

    def _vision_dtype(self) -> torch.dtype:
        return next(self.backbone.parameters()).dtype

    def embed_inputs(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None,
        embed_text: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Text embeddings with every image block filled in. ``embed_text``: the lookup of text ids
        to use instead of the LLM's embedding module (training's ZeRO-3 lookup over each rank's
        rows, :mod:`ovis.train.vocab_parallel`)."""
        if not self.tiled:
            text_ids = input_ids.masked_fill(input_ids == IMAGE_TOKEN_ID, 0)
        else:
            text_ids = input_ids.masked_fill((input_ids == IMAGE_TOKEN_ID) | indicator_mask(input_ids), 0)
        embeds = (embed_text or self.get_input_embeddings())(text_ids)
        images = None
        if pixel_values is not None and pixel_values.shape[0] > 0:
            images = self.encode_images(pixel_values)
        if not self.tiled:
            return merge_image_embeddings(embeds, input_ids, images, self.num_image_tokens)
        embeds = merge_image_embeddings(embeds, input_ids, images, self.tokens_per_tile, unit="view")
        return merge_indicator_embeddings(embeds, input_ids, self.indicator_embeddings())

    # -- forward / generate ------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """The LLM over the text embeddings with every image block filled in. ``position_ids`` go to
        the LLM as given: packed rows (:mod:`ovis.data.packing`) pass them restarting at 0 at each
        sample with no ``attention_mask``, and the LLM keeps each sample's attention to itself."""
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("forward needs input_ids or inputs_embeds")
            inputs_embeds = self.embed_inputs(input_ids, pixel_values)
        return self.llm(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, labels=labels,
            **kwargs,
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Generate from (left-padded) ``input_ids``; returns only the new tokens."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        inputs_embeds = self.embed_inputs(input_ids.to(self.device), pixel_values)
        return self.llm.generate(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask.to(self.device), **kwargs
        )

    # -- parameter accounting ----------------------------------------------------------------------
    def parameter_report(self) -> dict[str, int]:
        """Parameters per part, as ``ovis compose --dry-run`` prints them."""
        count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
        return {
            "visual_tokenizer.backbone": count(self.backbone),
            "visual_tokenizer.head": count(self.visual_tokenizer.head),
            "vte": count(self.vte),
            "llm": count(self.llm),
            "total": count(self),
        }


def read_original(directory: str | Path) -> OriginalCheckpoint:
    """Read a v1 directory into an ``OvisConfig`` and a state dict checked against it."""
    directory = Path(directory)
    if checkpoint_format(directory) != "original":
        raise ConversionError(f"{directory} is already in ovis format, not the original Ovis v1 format")
    translation = translate_config(read_config(directory), read_preprocessor(directory))
    state, files = read_state_dict(directory)
    config, state, notes = _checked(translation, state, files, directory, "key names unchanged")
    return OriginalCheckpoint(config, state, translation, notes)


def _checked(translation, state: dict[str, torch.Tensor], files, directory: Path, renamed: str):
    """``(config, state, notes)``: the translated config, the state dict checked against the model that
    config builds (on the meta device), the config's dtype that of the weights; ``renamed`` says
    how the keys were mapped, in the notes after the translation's own."""
    config = OvisConfig(**translation.config)
    with torch.device("meta"):
        skeleton = OvisForCausalLM(config)
    state, notes = check_state_dict(state, skeleton, str(directory))
    dtype = state_dtype(state)
    if dtype is not None:
        config.dtype = dtype
    return config, state, [*translation.notes, f"weights: {len(state)} tensors from {files.describe()}, {renamed}",
                           *notes]


def read_hf_ovis2(directory: str | Path) -> HfOvis2Checkpoint:
    """Read a transformers Ovis2 (hf-ovis2) directory into an ``OvisConfig`` and a state dict under
    ovis's names, checked against the model that config builds."""
    directory = Path(directory)
    if checkpoint_format(directory) != "hf-ovis2":
        raise ConversionError(f"{directory} is not a transformers Ovis2 (hf-ovis2) checkpoint")
    translation = translate_hf_config(*read_hf_configs(directory))
    state, files = read_state_dict(directory)
    config, state, notes = _checked(
        translation, state_from_hf(state, str(directory)), files, directory,
        "hf-ovis2 names mapped (model.vision_tower.transformer -> visual_tokenizer.backbone.vision_model, "
        "head_linear/head_norm -> visual_tokenizer.head.0/1, visual_embeddings_table -> vte, "
        "model.language_model -> llm.model)",
    )
    return HfOvis2Checkpoint(config, state, translation, notes)


def read_release(directory: str | Path) -> ReleaseCheckpoint:
    """Read an AIDC-AI Ovis2 release directory into an ``OvisConfig`` and a state dict under ovis's
    names (its AIMv2 trunk's fused qkv split), checked against the model that config builds."""
    directory = Path(directory)
    if checkpoint_format(directory) != "ovis2":
        raise ConversionError(f"{directory} is not an AIDC-AI Ovis2 release checkpoint")
    translation = translate_release_config(read_config(directory), read_preprocessor(directory))
    state, files = read_state_dict(directory)
    config, state, notes = _checked(
        translation, state_from_release(state, str(directory)), files, directory,
        "the AIMv2 trunk renamed (preprocessor.patchifier -> embeddings, trunk.blocks -> encoder.layers, fused "
        "attn.qkv split into q/k/v, mlp.fc1/fc3/fc2 -> gate/up/down), the rest unchanged",
    )
    return ReleaseCheckpoint(config, state, translation, notes)
