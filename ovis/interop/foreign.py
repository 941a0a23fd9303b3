"""Loading a checkpoint in another layout (v1, hf-ovis2, the Ovis2 release) as an ovis model and
processor; each layout's module supplies its reader and processor loader."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ovis.model import OvisForCausalLM
from ovis.model.v1_weights import ForeignCheckpoint


def load_foreign(
    directory: str | Path,
    read: Callable[[str | Path], ForeignCheckpoint],
    load_processor: Callable[[str | Path, list[str]], Any],
    dtype: str | torch.dtype | None = None,
):
    """``(model, processor, notes)``: the checkpoint ``read`` finds in ``directory`` built as an ovis
    model (in ``dtype`` when given) and ``load_processor``'s processor, which adds its notes to the
    checkpoint's."""
    kwargs = {"dtype": dtype} if dtype is not None else {}
    checkpoint = read(directory)
    model = OvisForCausalLM.from_pretrained(None, config=checkpoint.config, state_dict=checkpoint.state, **kwargs)
    notes = list(checkpoint.notes)
    processor = load_processor(directory, notes)
    return model, processor, notes
