"""Export the trained model as a Hugging Face directory that ``ovis.load`` reads.

The weights come from the engine (``Engine.final_state_dict``, which gathers them under ZeRO-3).
LoRA adapters are folded into the LLM's weights (``merge_on_export``) or written beside the base
weights in ``lora_adapter/``. The directory is written under a temporary name and renamed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ovis.fsutil import atomic_directory
from ovis.train.config import LoraOptions
from ovis.train.modules import is_lora, merge_lora_state_dict

if TYPE_CHECKING:
    from ovis.model import OvisForCausalLM
    from ovis.processing import OvisProcessor


def export_model(
    model: OvisForCausalLM,
    state_dict: dict[str, torch.Tensor],
    processor: OvisProcessor,
    out: Path,
    *,
    lora: LoraOptions | None = None,
) -> Path:
    """Write ``state_dict`` (keys of ``model``) with ``model``'s config, and the processor, to
    ``out`` atomically. Rank 0 only."""
    out = Path(out)
    with atomic_directory(out) as tmp:
        if is_lora(model):
            state_dict = _lora_export(model, state_dict, tmp, merge=lora is None or lora.merge_on_export)
        model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        processor.save_pretrained(tmp)
    return out


def _lora_export(
    model: OvisForCausalLM, state_dict: dict[str, torch.Tensor], tmp: Path, *, merge: bool
) -> dict[str, torch.Tensor]:
    peft_model = model.llm
    peft_config = peft_model.peft_config["default"]
    if getattr(peft_config, "use_dora", False) or getattr(peft_config, "use_rslora", False):
        raise ValueError("export merges plain LoRA only (no DoRA / rsLoRA)")
    scaling = peft_config.lora_alpha / peft_config.r
    if merge:
        return merge_lora_state_dict(state_dict, scaling)
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    llm_state = {k[len("llm."):]: v for k, v in state_dict.items() if k.startswith("llm.")}
    adapter = get_peft_model_state_dict(peft_model, state_dict=llm_state)
    adapter_dir = tmp / "lora_adapter"
    adapter_dir.mkdir()
    save_file({k: v.contiguous() for k, v in adapter.items()}, str(adapter_dir / "adapter_model.safetensors"))
    peft_config.save_pretrained(str(adapter_dir))
    return merge_lora_state_dict(state_dict, 0.0)  # base weights only, peft's key wrapping removed
