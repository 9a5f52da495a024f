"""Reconstruction heads and the per-field losses ℓ_f.

Each field projects its token's contextual vector and scores it against its own (input)
embedding table: full softmax for small vocabularies, cosine sampled softmax with in-batch
negatives (the distinct targets of the batch) and a temperature above `sampled_above`; a multi
field is reconstructed as a set (binary cross-entropy over its vocabulary); a sequence field
position by position, sharing its owner's vocabulary (as a set where it has no position tokens);
the label by a 2-way softmax.
ℓ_f is the mean loss over the masked occurrences of field f in the batch; a field with none
is marked absent and contributes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import Field
from torch import nn

from genctr.data.batches import Batch
from genctr.nn.embedding import FieldInfo
from genctr.pretrain.corruption import Masks
from genctr.pretrain.denoiser import Denoiser
from genctr.schema import PAD, FieldKind, Strict


class HeadOptions(Strict):
    sampled_above: int = Field(1000, ge=2, description="vocabularies larger than this use the "
                               "cosine sampled softmax")
    temperature: float = Field(0.1, gt=0, description="of the cosine sampled softmax")
    max_scored: int | None = Field(
        4096, ge=1, description="score at most this many masked occurrences of a field per batch "
        "(a uniform random subset: an unbiased estimate of l_f that bounds a sequence field's cost); "
        "null scores all")


@dataclass
class FieldLosses:
    """losses, accuracy: [F + 1] (label last); present: bool [F + 1]."""

    losses: torch.Tensor
    accuracy: torch.Tensor
    present: torch.Tensor


def cosine_softmax_loss(query: torch.Tensor, table: torch.Tensor, targets: torch.Tensor,
                        candidates: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of cos(query, table[c]) / temperature over the candidate ids (which must
    contain every target); returns (mean loss, accuracy). With every id as a candidate it is
    the full softmax over cosine logits."""
    q = nn.functional.normalize(query.float(), dim=-1) / temperature  # [N, d], cheaper than [N, C]
    c = nn.functional.normalize(table[candidates].float(), dim=-1)
    logits = q @ c.T
    where = torch.searchsorted(candidates, targets)
    loss = nn.functional.cross_entropy(logits, where)
    with torch.no_grad():
        accuracy = (logits.argmax(-1) == where).float().mean()
    return loss, accuracy


def head_kind(info: FieldInfo, options: HeadOptions, sequence_as_set: bool = False) -> str:
    """How a field is reconstructed: "set" (multi, or a sequence without position tokens),
    "sampled" or "softmax" by vocabulary size."""
    if info.kind is FieldKind.multi or (sequence_as_set and info.kind is FieldKind.sequence):
        return "set"
    return "sampled" if info.vocab_size > options.sampled_above else "softmax"


def field_loss(kind: str, query: torch.Tensor, table: torch.Tensor, targets: torch.Tensor,
               options: HeadOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean loss, accuracy) of reconstructing `targets` from `query` [N, d] against the field's
    own embedding table [V, d]: a set (targets [N, L]), sampled cosine or full softmax."""
    if kind == "set":
        return set_loss(query, table, targets)
    if kind == "sampled":
        return cosine_softmax_loss(query, table, targets, torch.unique(targets), options.temperature)
    logits = query.float() @ table.float().T
    logits[:, PAD] = float("-inf")
    loss = nn.functional.cross_entropy(logits, targets)
    with torch.no_grad():
        accuracy = (logits.argmax(-1) == targets).float().mean()
    return loss, accuracy


def set_loss(query: torch.Tensor, table: torch.Tensor, items: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-label BCE over the vocabulary (padding excluded); accuracy: top-1 is in the set."""
    logits = (query.float() @ table.float().T)[:, PAD + 1:]
    target = torch.zeros_like(logits)
    rows = torch.arange(len(items), device=items.device).unsqueeze(1).expand_as(items)
    valid = items != PAD
    target[rows[valid], items[valid] - 1] = 1.0
    loss = nn.functional.binary_cross_entropy_with_logits(logits, target)
    hit = target.gather(1, logits.argmax(-1, keepdim=True)).squeeze(1)
    return loss, hit.mean()


class FieldHeads(nn.Module):
    def __init__(self, fields: list[FieldInfo], width: int, options: HeadOptions,
                 sequence_as_set: bool = False) -> None:
        super().__init__()
        self.fields = fields
        self.options = options
        self.sequence_as_set = sequence_as_set  # the denoiser gives a sequence one pooled token
        self.project = nn.ModuleDict({f.name: nn.Linear(width, width) for f in fields})
        self.label = nn.Linear(width, 2)

    def kind(self, info: FieldInfo) -> str:
        return head_kind(info, self.options, self.sequence_as_set)

    def forward(self, hidden: torch.Tensor, batch: Batch, masks: Masks, denoiser: Denoiser) -> FieldLosses:
        """Per-field losses of the masked occurrences; `hidden` [B, T, d] from the denoiser."""
        count = len(self.fields) + 1
        losses = hidden.new_zeros(count, dtype=torch.float32)
        accuracy = hidden.new_zeros(count, dtype=torch.float32)
        present = torch.zeros(count, dtype=torch.bool)
        for i, info in enumerate(self.fields):
            tokens = batch.tokens[info.name]
            span = denoiser.slices[info.name]
            if info.name in denoiser.sequences:
                where = masks.positions[info.name]  # [B, L]
                states, targets = hidden[:, span][where], tokens[where].long()
            else:
                where = masks.fields[:, i]
                states, targets = hidden[where, span.start], tokens[where].long()
            if states.shape[0] == 0:
                continue
            states, targets = self._subsample(states, targets)
            table = denoiser.embedding.tables[info.table].weight
            query = self.project[info.name](states)
            losses[i], accuracy[i] = field_loss(self.kind(info), query, table, targets, self.options)
            present[i] = True
        labelled = masks.fields[:, -1]
        if labelled.any():
            logits = self.label(hidden[labelled, denoiser.label_token]).float()
            target = batch.label[labelled].long()
            losses[-1] = nn.functional.cross_entropy(logits, target)
            accuracy[-1] = (logits.argmax(-1) == target).float().mean()
            present[-1] = True
        return FieldLosses(losses, accuracy, present)

    def _subsample(self, states: torch.Tensor, targets: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """At most `max_scored` occurrences, drawn uniformly without replacement."""
        limit = self.options.max_scored
        if limit is None or len(states) <= limit:
            return states, targets
        keep = torch.randperm(len(states), device=states.device)[:limit]
        return states[keep], targets[keep]

    def label_logit(self, hidden: torch.Tensor, denoiser: Denoiser) -> torch.Tensor:
        """CTR logit [B] from the label token: logit(click) − logit(no click)."""
        logits = self.label(hidden[:, denoiser.label_token]).float()
        return logits[:, 1] - logits[:, 0]
