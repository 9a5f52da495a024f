"""A pre-trained denoiser as a test-time imputer: the values a masked field probably had, given
the instance's other fields (generative test-time inference, genctr.testtime.uttsi).

The denoiser is a model backbone pre-trained by masked field prediction (BackboneNet, objective
mfp): the fields to impute get its learned [MASK] vectors, its body gives H, and each field's
head scores H against the field's embedding table, as in pre-training. Only single-token fields
(ids and categoricals) are imputed; the out-of-vocabulary and padding tokens are never proposed.
The fine-tuned model must share the pre-training's vocabularies (same encoder), which
`imputer_for_run` checks, so a proposed token id means the same value to it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from genctr.data.batches import Batch
from genctr.errors import ConfigError, DataError
from genctr.data.encode import FeatureEncoder
from genctr.pretrain.backbone import BackboneNet
from genctr.pretrain.loop import load_pretrained
from genctr.runtime import move_batch
from genctr.schema import OOV, PAD, FieldKind

IMPUTABLE = (FieldKind.id, FieldKind.categorical)


class DenoiserImputer:
    """impute(batch, masked [B, F], top_k) -> {field: (values [B, k], probabilities [B, k])}
    for every imputable field masked in some row (rows where it is not masked get arbitrary
    proposals, ignored by the caller)."""

    def __init__(self, net: BackboneNet) -> None:
        if not isinstance(net, BackboneNet) or net.objective != "mfp":
            raise ConfigError("generative imputation needs a model backbone pre-trained by masked "
                              "field prediction (pretrain.denoiser.backbone: dnn, dcnv2, ...; "
                              "objective mfp); the transformer denoiser is not supported yet")
        self.net = net.eval()
        self.fields = net.fields

    def imputable(self) -> list[str]:
        return [f.name for f in self.fields if f.kind in IMPUTABLE]

    def impute(self, batch: Batch, masked: torch.Tensor, top_k: int
               ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        backbone, heads = self.net.backbone, self.net.heads
        device = backbone.embedding.tables_device()
        with torch.inference_mode():
            hidden = self.net.masked_hidden(move_batch(batch, device), masked.to(device))
            out = {}
            for position, info in enumerate(self.fields):
                if info.kind not in IMPUTABLE or not masked[:, position].any():
                    continue
                query = heads.project[info.name](hidden).float()
                table = backbone.embedding.tables[info.table].weight.float()
                if heads.kind(info) == "sampled":  # scored as in pre-training: cosine / temperature
                    logits = (torch.nn.functional.normalize(query, dim=-1)
                              @ torch.nn.functional.normalize(table, dim=-1).T) / heads.options.temperature
                else:
                    logits = query @ table.T
                logits[:, [PAD, OOV]] = float("-inf")
                top = logits.topk(min(top_k, logits.shape[1] - 2), dim=-1)
                out[info.name] = (top.indices.cpu(), torch.softmax(top.values, dim=-1).cpu())
        return out


def imputer_for_run(init_from: str | Path | None, encoder: FeatureEncoder,
                    device: torch.device | str = "cpu") -> DenoiserImputer:
    """The imputer of the pre-training a fine-tuned run was initialised from."""
    if not init_from:
        raise ConfigError("impute: denoiser needs a run fine-tuned from a pre-training (its "
                          "config has init_from); this run was trained from scratch")
    _, pretrained_encoder, net = load_pretrained(init_from)
    if not pretrained_encoder.same_state(encoder):
        raise DataError(f"impute: denoiser: the pre-training in {init_from} encoded other "
                        "vocabularies than this run; its proposals would mean other values")
    return DenoiserImputer(net.to(device))
