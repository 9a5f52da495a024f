"""HeteGen (full transfer): the pre-trained denoiser fine-tuned to fill in the masked label token.

Every field is visible and only the label is masked, the state pre-training practised; the
CTR logit is logit(click) − logit(no click) of the label head, or (`scorer: mlp`) an MLP over
all contextual token vectors; `dnn_units` adds an AutoInt+-style DNN branch over the flattened
field embeddings (its logit added; trained in fine-tuning only). A dropped field gets its neutral embedding like in any backbone,
so MATT and UTTSI apply unchanged; with the inference option `neutral: mask` it is masked
instead, the unknown-field state pre-training trained. `embedding_dim` is the denoiser's token
width. Trained from scratch unless `genctr train --init-from PRETRAIN_RUN` loads a pre-training
run (the denoiser's options are then taken from that run).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from genctr.models import register_model
from genctr.models.base import CTRModel, ModelOptions
from genctr.nn.blocks import MLP
from genctr.nn.embedding import FieldEmbedding
from genctr.pretrain.corruption import Masks
from genctr.pretrain.denoiser import Denoiser, DenoiserOptions


class HeteGenOptions(ModelOptions):
    embedding_dim: int = Field(32, ge=4)
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    ffn_multiple: int = Field(4, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    attention: Literal["softmax", "silu"] = "softmax"
    guidance: Literal["none", "query", "key"] = "none"
    guidance_detach: bool = True
    sequence_tokens: Literal["positions", "pooled"] = Field(
        "positions", description="a sequence field as a token per position or one pooled token")
    scorer: Literal["label", "mlp"] = Field("label", description="label head, or an MLP over all tokens")
    scorer_units: list[int] = Field(default_factory=lambda: [200, 200])
    dnn_units: list[int] = Field(default_factory=list, description="AutoInt+-style DNN branch: "
                                 "an MLP over the flattened field embeddings whose logit is added "
                                 "(empty: none; never pre-trained)")
    dnn_dropout: float = Field(0.2, ge=0, lt=1)
    dnn_batch_norm: bool = True

    @model_validator(mode="after")
    def _bin_tokens_only(self) -> "HeteGenOptions":
        if self.numeric_embedding != "bin" or self.learned_neutral:
            raise ValueError("hetegen embeds numerics as bin tokens and uses the mean neutral "
                             "embedding: numeric_embedding must be 'bin', learned_neutral false")
        return self

    def denoiser(self) -> DenoiserOptions:
        return DenoiserOptions(d_model=self.embedding_dim, layers=self.layers, heads=self.heads,
                               ffn_multiple=self.ffn_multiple, dropout=self.dropout,
                               attention=self.attention, guidance=self.guidance,
                               guidance_detach=self.guidance_detach,
                               sequence_tokens=self.sequence_tokens)

    @staticmethod
    def from_denoiser(options: DenoiserOptions) -> dict:
        """This model's keys for a pre-trained denoiser's options (its architecture keys)."""
        return {"embedding_dim": options.d_model, "layers": options.layers, "heads": options.heads,
                "ffn_multiple": options.ffn_multiple, "attention": options.attention,
                "guidance": options.guidance, "guidance_detach": options.guidance_detach,
                "sequence_tokens": options.sequence_tokens}


@register_model
class HeteGen(CTRModel):
    name = "hetegen"
    Options = HeteGenOptions

    def __init__(self, fields, options: HeteGenOptions):
        nn.Module.__init__(self)  # the denoiser owns the field embedding
        self.options = options
        self.denoiser = Denoiser(fields, options.denoiser())
        self.label_head = nn.Linear(options.embedding_dim, 2)
        # the pre-training's log-difficulties s (for the attention guidance), fixed when tuning
        self.register_buffer("log_difficulty", torch.zeros(len(fields) + 1))
        self.scorer = (MLP(self.denoiser.num_tokens * options.embedding_dim, options.scorer_units,
                           out_dim=1, dropout=options.dropout)
                       if options.scorer == "mlp" else None)
        self.dnn = (MLP(len(fields) * options.embedding_dim, options.dnn_units, out_dim=1,
                        dropout=options.dnn_dropout, batch_norm=options.dnn_batch_norm)
                    if options.dnn_units else None)

    has_mask_state = True  # a dropped field can take the denoiser's [MASK] vector (neutral: mask)

    @property
    def embedding(self) -> FieldEmbedding:
        return self.denoiser.embedding

    def masks(self, batch, drop: torch.Tensor | None) -> tuple[Masks, torch.Tensor | None]:
        """The fine-tuning state (only the label masked); with the embedding's neutral mode
        "mask", dropped fields are masked too (the state pre-training practised: a sequence
        field's items, padding excepted) instead of getting a neutral embedding."""
        masks = Masks.label_only(batch.label.shape[0], len(self.denoiser.fields), self.denoiser.sequences,
                                 batch.label.device)
        if drop is None or self.embedding.neutral_mode != "mask":
            return masks, drop
        fields = masks.fields.clone()
        fields[:, :-1] |= drop
        positions = {name: drop[:, self.embedding.field_index(name)].unsqueeze(1) & (batch.tokens[name] != 0)
                     for name in self.denoiser.sequences}
        return Masks(fields, positions), None

    def forward(self, batch, drop=None):
        deep = 0.0 if self.dnn is None else self.dnn(self.embedding(batch, drop).flatten(1)).squeeze(-1)
        masks, drop = self.masks(batch, drop)
        if self.scorer is not None:
            hidden = self.denoiser(batch, masks, drop, log_difficulty=self.log_difficulty)
            return self.scorer(hidden.flatten(1)).squeeze(-1) + deep
        label = self.denoiser(batch, masks, drop, log_difficulty=self.log_difficulty,
                              query_token=self.denoiser.label_token)
        logits = self.label_head(label[:, 0]).float()
        return logits[:, 1] - logits[:, 0] + deep
