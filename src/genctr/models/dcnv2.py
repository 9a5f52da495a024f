"""DCNv2 (Wang et al., 2021): full-rank cross network with a DNN, parallel or stacked."""

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from genctr.models.base import CTRModel
from genctr.models.dnn import DNNOptions
from genctr.nn.blocks import MLP, CrossNetV2, to_autocast_dtype


class DCNv2Options(DNNOptions):
    structure: Literal["parallel", "stacked"] = "parallel"
    cross_layers: int = Field(3, ge=1)


class DCNv2(CTRModel):
    name = "dcnv2"
    Options = DCNv2Options

    def __init__(self, fields, options: DCNv2Options):
        super().__init__(fields, options)
        self.cross = CrossNetV2(self.flat_dim, options.cross_layers)
        mlp_in = self.flat_dim
        self.mlp = MLP(mlp_in, options.hidden_units, dropout=options.dropout,
                       batch_norm=options.batch_norm)
        head_in = self.mlp.out_dim + (self.flat_dim if options.structure == "parallel" else 0)
        self.head = nn.Linear(head_in, 1)

    can_represent = True

    def represent(self, batch, drop=None):
        flat = to_autocast_dtype(self.embedding(batch, drop).flatten(1))  # for cross and MLP
        crossed = self.cross(flat)
        if self.options.structure == "stacked":
            return self.mlp(crossed)
        return torch.cat([crossed, self.mlp(flat)], dim=1)

    def score(self, hidden):
        return self.head(hidden).squeeze(-1)

    @property
    def hidden_dim(self) -> int:
        return self.head.in_features
