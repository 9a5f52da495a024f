"""Any backbone as the pre-training denoiser (MAP-style, balanced per field like HeteGenCTR).

The backbone keeps its own embedding and body (`CTRModel.represent`: everything before the
output layer, [B, H]); pre-training adds heads on H, which full transfer leaves behind.
Objectives, both giving one loss ℓ_f per field for the same balancers (uniform /
self_balancing / proportional):
- `mfp`, masked field prediction (the diffusion objective): fields chosen by the corruption
  schedule get the backbone's learned per-field [MASK] vector (its `learned_neutral` row, which
  is not transferred); a per-field projection of H is scored against the field's own embedding
  table (full softmax, or cosine sampled softmax over in-batch targets for large vocabularies);
  multi and sequence fields are reconstructed as sets.
- `rfd`, replaced field detection: the chosen fields take the value of another row of the batch
  (a draw from the field's empirical distribution) and one binary head per field says whether
  the value was replaced (cheap for huge vocabularies).
The label is never an input, and a target only with `label_target` (`pretrain.label_fraction`):
then the backbone's own output layer predicts the label from the same corrupted fields for the
rows whose label is known (NaN marks the held-back ones) and the balancer weighs that loss in
the label slot like a field's; full transfer carries that output layer into the fine-tuning. So
pre-training can use rows whose labels are held back. `mask: oov` masks a field with its
out-of-vocabulary token instead of the [MASK] vector: the OOV row (a numeric field's
missing-value vector) is then trained as "this field unknown, the others given" and transferred,
where otherwise it stays at its initial value, never seen in training, and a cold user's unseen
id reaches a body that never met it. A body without attention has no place for difficulty-guided
attention; as an ablation, `input_scaling` multiplies each field's input embedding by
exp(−s_f/2) while pre-training, so a field the balancer finds hard (large s_f) enters the body
with a smaller norm.
"""

from __future__ import annotations

import torch
from torch import nn

from genctr.data.batches import Batch, with_unknown
from genctr.errors import ConfigError
from genctr.models import build_model
from genctr.models.base import CTRModel
from genctr.nn.embedding import FieldEmbedding, FieldInfo
from genctr.pretrain.balance import Balancer, BalancerOptions
from genctr.pretrain.corruption import Corruption, CorruptionOptions, Masks
from genctr.pretrain.heads import FieldLosses, HeadOptions, field_loss, head_kind


def build_backbone(name: str, fields: list[FieldInfo], options: dict) -> CTRModel:
    """The backbone with a learned per-field [MASK] vector (its learned neutral embedding)."""
    model = build_model(name, fields, options | {"learned_neutral": True})
    if not model.can_represent:
        raise ConfigError(f"pretrain.denoiser.backbone: model '{name}' cannot serve as a denoiser "
                          "(it has no represent(): body and output layer in one)")
    return model


class BackboneNet(nn.Module):
    """Pre-training network over a backbone: same interface as GenerativeNet (masks, losses,
    balancer, fields, field_names, heads.kind) so that one loop serves both."""

    def __init__(self, fields: list[FieldInfo], backbone: str, backbone_options: dict,
                 objective: str, heads: HeadOptions, balancer: BalancerOptions,
                 corruption: CorruptionOptions, input_scaling: bool = False,
                 mask: str = "neutral", label_target: bool = False) -> None:
        super().__init__()
        self.fields = fields
        self.objective = objective
        self.mask = mask
        if mask != "neutral" and objective != "mfp":
            raise ConfigError("pretrain.denoiser.mask: oov masks fields for masked field "
                              "prediction (objective mfp); rfd replaces them")
        self.backbone = build_backbone(backbone, fields, backbone_options)
        self.heads = BackboneHeads(fields, self.backbone, heads, objective)
        self.label_target = label_target
        self.balancer = Balancer(balancer, len(fields) + 1)  # the label slot: label_target
        self.corruption = Corruption(corruption, len(fields), {})
        self.input_scaling = input_scaling
        if input_scaling and self.balancer.log_difficulty is None:
            raise ConfigError("pretrain.denoiser.input_scaling needs a learned difficulty: "
                              "balancer self_balancing or proportional, not uniform")

    @property
    def embedding(self) -> FieldEmbedding:
        """The backbone's field tables (what embedding transfer carries into another backbone)."""
        return self.backbone.embedding

    def field_names(self) -> list[str]:
        return [f.name for f in self.fields] + ["label"]

    def masks(self, batch: Batch, generator: torch.Generator | None = None) -> Masks:
        return self.corruption.sample(len(batch), {}, generator)

    def losses(self, batch: Batch, masks: Masks) -> tuple[torch.Tensor, torch.Tensor, FieldLosses]:
        embedding = self.backbone.embedding
        if self.input_scaling:  # difficulty guidance without attention: hard fields speak softer
            embedding.input_scale = torch.exp(-self.balancer.log_difficulty[:-1].detach() / 2)
        try:
            return self._losses(batch, masks)
        finally:
            embedding.input_scale = None

    def _losses(self, batch: Batch, masks: Masks) -> tuple[torch.Tensor, torch.Tensor, FieldLosses]:
        chosen = masks.fields[:, :-1]
        if self.objective == "mfp":
            hidden = self.masked_hidden(batch, chosen)
            field_losses = self.heads.reconstruct(hidden, batch, chosen)
        else:
            replaced, changed = replace_fields(batch, chosen, self.fields)
            hidden = self.backbone.represent(replaced)
            field_losses = self.heads.detect(hidden, changed)
        if self.label_target:
            field_losses = self.with_label_loss(field_losses, hidden, batch.label)
        loss, weights = self.balancer(field_losses.losses, field_losses.present)
        return loss, weights, field_losses

    def with_label_loss(self, field_losses: FieldLosses, hidden: torch.Tensor,
                        label: torch.Tensor) -> FieldLosses:
        """The label slot filled with the output layer's BCE on the rows whose label is known."""
        known = torch.isfinite(label)
        if not known.any():
            return field_losses
        logits = self.backbone.score(hidden[known]).float()
        target = label[known].float()
        loss = nn.functional.binary_cross_entropy_with_logits(logits, target)
        with torch.no_grad():
            hits = ((logits > 0) == (target > 0.5)).float().mean()
        present = field_losses.present.clone()
        present[-1] = True
        return FieldLosses(torch.cat([field_losses.losses[:-1], loss.view(1)]),
                           torch.cat([field_losses.accuracy[:-1], hits.view(1)]), present)

    def masked_hidden(self, batch: Batch, chosen: torch.Tensor) -> torch.Tensor:
        """[B, H] of the batch with the `chosen` fields [B, F] masked as `mask` says."""
        if self.mask == "oov":
            return self.backbone.represent(with_unknown(batch, chosen, [f.name for f in self.fields]))
        return self.backbone.represent(batch, chosen)


def replace_fields(batch: Batch, chosen: torch.Tensor, fields: list[FieldInfo]
                   ) -> tuple[Batch, torch.Tensor]:
    """Chosen fields [B, F] take the value of a random other row; returns the corrupted batch
    and which fields really changed (a draw can repeat the original value)."""
    tokens, values = dict(batch.tokens), dict(batch.values)
    changed = torch.zeros_like(chosen)
    for i, info in enumerate(fields):
        rows = chosen[:, i]
        donor = torch.randperm(len(batch), device=chosen.device)
        original = batch.tokens[info.name]
        drawn = original[donor]
        where = rows.view(-1, *([1] * (original.dim() - 1)))
        tokens[info.name] = torch.where(where, drawn, original)
        differs = (drawn != original) if original.dim() == 1 else (drawn != original).any(dim=1)
        if info.name in batch.values:
            values[info.name] = torch.where(rows, batch.values[info.name][donor], batch.values[info.name])
            differs = differs | (batch.values[info.name][donor] != batch.values[info.name])
        changed[:, i] = rows & differs
    return Batch(tokens, values, batch.label, batch.group), changed


class BackboneHeads(nn.Module):
    def __init__(self, fields: list[FieldInfo], backbone: CTRModel, options: HeadOptions,
                 objective: str) -> None:
        super().__init__()
        self.fields = fields
        self.options = options
        self.embedding = backbone.embedding
        width, dim = backbone.hidden_dim, backbone.embedding.dim
        if objective == "mfp":
            self.project = nn.ModuleDict({f.name: nn.Linear(width, dim) for f in fields})
        else:
            self.detector = nn.Linear(width, len(fields))

    def kind(self, info: FieldInfo) -> str:
        if not hasattr(self, "project"):
            return "replaced?"
        return head_kind(info, self.options, sequence_as_set=True)  # a body pools every list

    def reconstruct(self, hidden: torch.Tensor, batch: Batch, chosen: torch.Tensor) -> FieldLosses:
        count = len(self.fields) + 1
        losses = hidden.new_zeros(count, dtype=torch.float32)
        accuracy = hidden.new_zeros(count, dtype=torch.float32)
        present = torch.zeros(count, dtype=torch.bool)
        for i, info in enumerate(self.fields):
            rows = chosen[:, i]
            if not rows.any():
                continue
            targets = batch.tokens[info.name][rows].long()
            query = self.project[info.name](hidden[rows])
            table = self.embedding.tables[info.table].weight
            losses[i], accuracy[i] = field_loss(self.kind(info), query, table, targets, self.options)
            present[i] = True
        return FieldLosses(losses, accuracy, present)

    def detect(self, hidden: torch.Tensor, changed: torch.Tensor) -> FieldLosses:
        logits = self.detector(hidden).float()  # [B, F]
        target = changed.float()
        per_field = nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(0)
        with torch.no_grad():
            hits = ((logits > 0) == changed).float().mean(0)
        zero = per_field.new_zeros(1)
        present = torch.ones(len(self.fields) + 1, dtype=torch.bool)
        present[-1] = False
        return FieldLosses(torch.cat([per_field, zero]), torch.cat([hits, zero]), present)
