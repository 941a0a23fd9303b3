"""Export the trained model as a Hugging Face directory that ``ovis.load`` reads.

Under ZeRO-3 each rank holds a slice of every parameter: the full weights are gathered to rank 0
module by module first (DeepSpeed's consolidated state dict, the ``save_16bit_model`` path).
LoRA adapters are folded into the LLM's weights (``merge_on_export``) or written beside the base
weights in ``lora_adapter/``. The directory is written under a temporary name and renamed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ovis.fsutil import atomic_directory
from ovis.train.modules import is_lora, merge_lora_state_dict

if TYPE_CHECKING:
    from ovis.model import OvisForCausalLM
    from ovis.processing import OvisProcessor
    from ovis.train.config import LoraOptions

WRAPPER_PREFIX = "model."  # the trainer's loss wrapper holds the Ovis model as ``.model``


def gather_state_dict(engine: Any, prefix: str = WRAPPER_PREFIX) -> dict[str, torch.Tensor] | None:
    """The full state dict of the engine's Ovis model on rank 0 (``None`` on other ranks).

    Call on every rank: under ZeRO-3 this is a collective.
    """
    import torch.distributed as dist

    if engine.zero_optimization_partition_weights():
        full = engine._zero3_consolidated_16bit_state_dict()
    else:
        full = engine.module.state_dict() if dist.get_rank() == 0 else None
    if full is None:
        return None
    return {k[len(prefix):]: v.detach().cpu() for k, v in full.items() if k.startswith(prefix)}


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
