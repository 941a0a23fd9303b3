"""The names a model's tensors have in its files, where transformers renames them on load.

transformers 5 loads some architectures under other names than it saves them
(``transformers.conversion_mapping``): a wrapped ``ViTModel``'s ``encoder.layer.0.attention.attention.query``
is ``layers.0.attention.q_proj`` in the module, and ``save_pretrained`` writes the old name back. Code
that reads a directory's tensors itself (the training loader reads each rank's slice; the shape check
compares the header with the model) maps the stored names as ``from_pretrained`` does, through
transformers' own renaming rules, so a backbone or LLM that transformers renames loads the same
everywhere. A rule that does more than rename (splits, merges, transposes a tensor) cannot be read a
slice at a time: :func:`stored_to_model` reports which tensors need one, and its caller loads them
through ``from_pretrained``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

logger = logging.getLogger("ovis")


@dataclass
class StoredNames:
    """How a directory's stored tensor names meet a model's state-dict names."""

    #: stored name -> the model's name, for the tensors transformers loads under another name
    renamed: dict[str, str] = field(default_factory=dict)
    #: stored names a conversion other than a renaming applies to (empty: every tensor reads as stored)
    converted: list[str] = field(default_factory=list)

    def model_name(self, stored: str) -> str:
        return self.renamed.get(stored, stored)


def stored_to_model(model: torch.nn.Module, stored: Iterable[str]) -> StoredNames:
    """What ``from_pretrained`` would load each of the ``stored`` names as, into ``model`` (a model
    built on the meta device will do: only its structure and state-dict names are read)."""
    conversions = _conversions(model)
    if not conversions:
        return StoredNames()
    from transformers.core_model_loading import WeightConverter, WeightRenaming, dot_natural_key, rename_source_key

    renamings = [c for c in conversions if isinstance(c, WeightRenaming)]
    converters = [c for c in conversions if isinstance(c, WeightConverter)]
    prefix = getattr(model, "base_model_prefix", "")
    wanted = model.state_dict()
    names = StoredNames()
    # (in transformers' order: some renamings only start acting once an earlier key has matched)
    for key in sorted(stored, key=dot_natural_key):
        renamed, converter = rename_source_key(key, renamings, converters, prefix, wanted)
        if renamed not in wanted and key in wanted:
            continue  # as from_pretrained: a key the model has as it is keeps its name
        if converter is not None:
            names.converted.append(key)
        elif renamed != key:
            names.renamed[key] = renamed
    return names


def _conversions(model: torch.nn.Module) -> list:
    """transformers' conversion rules for ``model`` and its sub-models (as ``from_pretrained`` collects
    them); none where this transformers has no such mechanism."""
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        return []
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
    except ImportError:  # a transformers without renaming on load: stored names are the model's
        return []
    return list(get_model_conversion_mapping(model))
