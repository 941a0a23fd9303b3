"""The loss of one micro-batch: :class:`TrainStep`, the module an engine trains.

It wraps the Ovis model so that a forward pass returns the loss itself (computing the LM head only
where there are labels) and keeps every trainable parameter in the graph when a batch has no image.
Packed batches (``position_ids``, no ``attention_mask``: :mod:`ovis.data.packing`) give the same
loss as the same samples padded: the same labelled tokens, each sample attending only to itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ovis.data.packing import RowLength, uses_varlen, varlen_kwargs
from ovis.model.merging import IGNORE_INDEX
from ovis.train import frozen_linears, vocab_parallel

#: The batch entries a forward pass takes (a collated batch may hold more, e.g. ``num_skipped``).
BATCH_KEYS = ("input_ids", "attention_mask", "labels", "pixel_values", "position_ids")
#: :class:`TrainStep` holds the Ovis model as ``.model``: its state-dict keys start with this.
WRAPPER_PREFIX = "model."


def causal_lm(llm: nn.Module) -> nn.Module:
    """The Hugging Face causal LM inside ``llm`` (unwrapping a peft model)."""
    return llm.get_base_model() if hasattr(llm, "get_base_model") else llm


class TrainStep(nn.Module):
    """What an engine wraps: the Ovis model plus the loss.

    ``forward`` returns ``(mean loss over labelled tokens, number of labelled tokens)``. The LM
    head runs only at labelled positions (the full ``[B, L, vocab]`` logits are never built).
    When the batch has no image but visual parameters train, a zero-weighted pass over a blank
    image keeps every trainable parameter in the graph, as ZeRO / DDP need on every rank.
    Under ZeRO-3 a frozen token embedding / LM head is used over each rank's own rows, never
    gathered whole (:mod:`ovis.train.vocab_parallel`), and so are the LLM's frozen Linear layers in
    steps short enough for that to move less than their weights (:mod:`ovis.train.frozen_linears`).
    """

    def __init__(self, model: nn.Module, *, image_size: int, dummy_visual: bool) -> None:
        super().__init__()
        self.model = model
        self.image_size = image_size
        self.dummy_visual = dummy_visual
        self._vocab: tuple[vocab_parallel.VocabParallel | None, vocab_parallel.VocabParallel | None] = (None, None)
        self._linears: frozen_linears.FrozenLinears | None = None

    def plan_zero3(self, device: torch.device) -> None:
        """Use the token embedding / LM head and the LLM's Linear layers over each rank's rows where
        they are frozen ZeRO-3 partitions. The engine calls it on every rank once the model is
        partitioned, outside any forward pass: inside one, DeepSpeed gathers a parameter whole the
        moment it is read."""
        lm = causal_lm(self.model.llm)
        self._vocab = vocab_parallel.plan(lm, device, head=_plain_head(lm))
        self._linears = frozen_linears.plan(lm, device)

    def backward_done(self) -> None:
        """The engine calls it after each backward pass (ends the step's choice of layers over rows)."""
        if self._linears is not None:
            self._linears.end()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if labels is None:
            raise ValueError("TrainStep needs labels")
        model = self.model
        lm = causal_lm(model.llm)
        lookup, head = self._vocab
        embeds = model.embed_inputs(input_ids, pixel_values, lookup.lookup if lookup else None)
        if self._linears is not None:
            self._linears.begin(embeds.shape[:-1].numel())
        if self.dummy_visual and (pixel_values is None or pixel_values.shape[0] == 0):
            blank = torch.zeros(1, 3, self.image_size, self.image_size, device=embeds.device)
            embeds = embeds + 0.0 * model.encode_images(blank).sum().to(embeds.dtype)
        targets = labels[:, 1:]
        mask = targets != IGNORE_INDEX
        inputs = {"inputs_embeds": embeds, "attention_mask": attention_mask, "use_cache": False}
        if position_ids is not None:  # packed rows (ovis.data.packing)
            # A sample's first token is not predicted from the previous sample's last one.
            mask = mask & (position_ids[:, 1:] != 0)
            inputs = _packed_inputs(embeds, position_ids, attention_mask, lm)
        rows, width = input_ids.shape
        count = mask.sum()
        if _plain_head(lm):
            hidden = lm.get_decoder()(**inputs).last_hidden_state.reshape(rows, width, -1)
            if head is not None:
                return head.losses(hidden[:, :-1][mask], targets[mask]).sum() / count.clamp(min=1), count
            logits = lm.get_output_embeddings()(hidden[:, :-1][mask])
        else:  # heads with soft-capping / scaling: let the model compute its logits
            logits = model.llm(**inputs).logits.reshape(rows, width, -1)
            logits = logits[:, :-1][mask]
        loss = F.cross_entropy(logits.float(), targets[mask], reduction="sum") / count.clamp(min=1)
        return loss, count


def _packed_inputs(
    embeds: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor | None, lm: nn.Module
) -> dict[str, object]:
    """The LLM's inputs for packed rows: no attention mask (transformers then builds the
    block-diagonal causal mask from the position ids); on flash-attention the rows flattened into
    one with the samples' boundaries, for the varlen kernel."""
    if attention_mask is not None:
        raise ValueError("packed rows take position_ids and no attention_mask (the mask would hide the packing)")
    inputs: dict[str, object] = {"inputs_embeds": embeds, "position_ids": position_ids, "use_cache": False}
    if uses_varlen(getattr(lm.config, "_attn_implementation", None)):
        inputs |= varlen_kwargs(position_ids)
        inputs["inputs_embeds"] = embeds.reshape(1, -1, embeds.shape[-1])
        inputs["position_ids"] = position_ids.reshape(1, -1)
    return inputs


def packed_row_length(model: nn.Module) -> RowLength:
    """How long packed rows may grow for ``model``'s attention: up to ``max_length`` on flash-attention
    (its varlen kernel's cost does not grow with the row), else as long as the longest sample (a
    masked attention costs the square of the row: longer rows would cost more than padding)."""
    lm = causal_lm(model.llm)
    return "max_length" if uses_varlen(getattr(lm.config, "_attn_implementation", None)) else "longest"


def _plain_head(lm: nn.Module) -> bool:
    config = getattr(lm, "config", None)
    odd = any(getattr(config, name, None) for name in ("final_logit_softcapping", "logit_scale"))
    return not odd and hasattr(lm, "get_decoder") and lm.get_output_embeddings() is not None


def empty_batch(pad_token_id: int, image_size: int) -> dict[str, torch.Tensor]:
    """A one-token batch with no label and no image: what a micro-batch whose samples were all
    skipped becomes, so every rank still makes its (zero-loss) pass."""
    return {
        "input_ids": torch.tensor([[pad_token_id]]),
        "attention_mask": torch.ones(1, 1, dtype=torch.long),
        "labels": torch.tensor([[IGNORE_INDEX]]),
        "pixel_values": torch.zeros(0, 3, image_size, image_size),
    }
