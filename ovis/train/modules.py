"""Which parameters a stage trains: ``train_modules`` tokens -> ``requires_grad``, plus LoRA.

Everything is frozen first, then the selected parts are unfrozen. Visual parameters that get no
gradient by construction (a CLIP ``post_layernorm`` the features are taken before, a SigLIP
pooling head, a VTE without indicator rows to use) are found with one tiny backward pass and kept
frozen, so ZeRO/DDP never wait for gradients that cannot come.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ovis.errors import ConfigError
from ovis.train.config import TRAIN_MODULE_TOKENS, LoraOptions

if TYPE_CHECKING:
    from ovis.model import OvisForCausalLM

#: Parts reported in the summary (disjoint; together they cover the model).
PARTS = ("visual_tokenizer.backbone", "visual_tokenizer.head", "vte", "llm")


@dataclass
class ModuleSummary:
    """Trainable / total parameters per part, and what was frozen because it gets no gradient."""

    trainable: dict[str, int] = field(default_factory=dict)
    total: dict[str, int] = field(default_factory=dict)
    unused_frozen: list[str] = field(default_factory=list)

    @property
    def num_trainable(self) -> int:
        return sum(self.trainable.values())

    def lines(self) -> list[str]:
        out = [f"{part:<28} {self.trainable[part]:>14,} / {self.total[part]:,}" for part in self.total]
        out.append(f"{'trainable total':<28} {self.num_trainable:>14,} / {sum(self.total.values()):,}")
        if self.unused_frozen:
            out.append(f"kept frozen (no gradient by construction): {', '.join(self.unused_frozen)}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"trainable": self.trainable, "total": self.total, "unused_frozen": self.unused_frozen}


def part_modules(model: OvisForCausalLM) -> dict[str, nn.Module]:
    return {
        "visual_tokenizer.backbone": model.backbone,
        "visual_tokenizer.head": model.visual_tokenizer.head,
        "vte": model.vte,
        "llm": model.llm,
    }


def token_modules(model: OvisForCausalLM, token: str) -> list[nn.Module]:
    """The modules a ``train_modules`` token selects."""
    if token not in TRAIN_MODULE_TOKENS:
        raise ConfigError(f"unknown train_modules token {token!r}; valid: {', '.join(TRAIN_MODULE_TOKENS)}")
    return {
        "all": lambda: [model],
        "llm": lambda: [model.llm],
        "visual_tokenizer": lambda: [model.visual_tokenizer],
        "visual_tokenizer.backbone": lambda: [model.backbone],
        "visual_tokenizer.re_init_layers": lambda: [model.backbone.blocks()[-1]],
        "visual_tokenizer.head": lambda: [model.visual_tokenizer.head],
        "vte": lambda: [model.vte],
    }[token]()


def apply_train_modules(
    model: OvisForCausalLM, tokens: Iterable[str], *, reinit_last_block: bool = False
) -> ModuleSummary:
    """Freeze ``model``, then unfreeze what ``tokens`` select; optionally re-initialise the
    backbone's last block first (stage 1). Returns the per-part summary."""
    tokens = list(tokens)
    modules = [m for token in tokens for m in token_modules(model, token)]  # validates every token
    if reinit_last_block:
        model.backbone.reinit_last_block()
    model.requires_grad_(False)
    for module in modules:
        module.requires_grad_(True)
    unused = freeze_unused_visual_params(model)
    return summarize(model, unused)


def freeze_unused_visual_params(model: OvisForCausalLM) -> list[str]:
    """Freeze trainable visual-path parameters that ``encode_images`` gives no gradient; their names."""
    visual = dict(model.visual_tokenizer.named_parameters(prefix="visual_tokenizer"))
    visual.update(model.vte.named_parameters(prefix="vte"))
    trainable = {name: p for name, p in visual.items() if p.requires_grad}
    if not trainable:
        return []
    size = model.backbone.spec.image_size
    dummy = torch.zeros(1, 3, size, size)
    with torch.enable_grad():
        out = model.encode_images(dummy)
        grads = torch.autograd.grad(out.float().sum(), list(trainable.values()), allow_unused=True)
    unused = [name for (name, p), g in zip(trainable.items(), grads, strict=True) if g is None]
    for name in unused:
        trainable[name].requires_grad_(False)
    return unused


def summarize(model: OvisForCausalLM, unused: list[str] | None = None) -> ModuleSummary:
    summary = ModuleSummary(unused_frozen=list(unused or []))
    for part, module in part_modules(model).items():
        params = list(module.parameters())
        summary.trainable[part] = sum(_numel(p) for p in params if p.requires_grad)
        summary.total[part] = sum(_numel(p) for p in params)
    return summary


def _numel(param: torch.Tensor) -> int:
    # A ZeRO-3 partitioned parameter holds an empty tensor; its own size is ds_numel / ds_shape.
    return getattr(param, "ds_numel", param.numel())


def _shape(param: torch.Tensor) -> tuple[int, ...]:
    return tuple(getattr(param, "ds_shape", param.shape))


def visual_params_trainable(model: OvisForCausalLM) -> bool:
    return any(p.requires_grad for p in model.visual_tokenizer.parameters()) or any(
        p.requires_grad for p in model.vte.parameters()
    )


# -- LoRA ---------------------------------------------------------------------------------------
def apply_lora(model: OvisForCausalLM, options: LoraOptions) -> int:
    """Wrap ``model.llm`` with peft LoRA adapters; the LLM's own weights are frozen, the adapters
    train. Returns the number of adapter parameters."""
    from peft import LoraConfig, get_peft_model  # optional (ovis[train]); slow to import

    if not any(p.requires_grad for p in model.llm.parameters()):
        raise ConfigError("lora.enabled needs the LLM among train_modules ('llm' or 'all')")
    config = LoraConfig(
        r=options.r,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=list(options.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    model.llm = get_peft_model(model.llm, config)
    return sum(_numel(p) for p in model.llm.parameters() if p.requires_grad)


def is_lora(model: OvisForCausalLM) -> bool:
    return hasattr(model.llm, "peft_config")


def merge_lora_state_dict(state_dict: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """Fold plain-LoRA adapters into their base weights in a full state dict (``W + s * B @ A``) and
    drop peft's wrapping from the key names, giving the keys of the unwrapped model.

    Works on a gathered state dict, so it needs no live (possibly ZeRO-3 partitioned) model.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if ".lora_A." in key or ".lora_B." in key or ".lora_dropout." in key:
            continue
        out[_unwrap_key(key)] = value
    for key, a in state_dict.items():
        if ".lora_A." not in key or scaling == 0:
            continue
        stem, adapter = key.split(".lora_A.")
        b = state_dict[f"{stem}.lora_B.{adapter}"]
        target = _unwrap_key(f"{stem}.base_layer.weight")
        weight = out[target]
        out[target] = (weight.float() + scaling * (b.float() @ a.float())).to(weight.dtype)
    return out


def _unwrap_key(key: str) -> str:
    return key.replace("base_model.model.", "", 1).replace(".base_layer.", ".")


def lr_groups(
    model: OvisForCausalLM, module_lr: dict[str, float], base_lr: float, weight_decay: float
) -> list[dict[str, Any]]:
    """Optimizer parameter groups for the trainable parameters: one learning rate per
    ``module_lr`` token (the most specific token that contains a parameter wins) and ``base_lr``
    for the rest, each split into decayed (matrices) and not decayed (vectors: norms, biases).
    Empty groups are left out; the base groups come first."""
    owner: dict[int, str] = {}
    # Broad tokens first, so that a more specific one (more dots) overwrites them.
    for token in sorted(module_lr, key=lambda t: t.count(".")):
        for module in token_modules(model, token):
            for param in module.parameters():
                owner[id(param)] = token
    groups: list[dict[str, Any]] = []
    for token, lr in [(None, base_lr), *((t, module_lr[t]) for t in module_lr)]:
        params = [p for p in model.parameters() if p.requires_grad and owner.get(id(p)) == token]
        for decay in (True, False):
            chosen = [p for p in params if (len(_shape(p)) >= 2) == decay]
            if chosen:
                groups.append({
                    "params": chosen,
                    "lr": lr,
                    "weight_decay": weight_decay if decay else 0.0,
                    "name": f"{token or 'base'}{'' if decay else '.no_decay'}",
                })
    return groups

