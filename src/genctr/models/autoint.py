"""AutoInt+ (Song et al., 2019): self-attention over fields, plus a DNN."""

import torch
from pydantic import Field
from torch import nn

from genctr.models.base import CTRModel
from genctr.models.dnn import DNNOptions
from genctr.nn.blocks import MLP, SelfAttentionLayer


class AutoIntOptions(DNNOptions):
    attention_layers: int = Field(3, ge=1)
    attention_dim: int = Field(64, ge=1)
    heads: int = Field(2, ge=1)
    residual: bool = True


class AutoIntPlus(CTRModel):
    name = "autoint"
    Options = AutoIntOptions

    def __init__(self, fields, options: AutoIntOptions):
        super().__init__(fields, options)
        dims = [options.embedding_dim] + [options.attention_dim] * options.attention_layers
        self.attention = nn.Sequential(*[
            SelfAttentionLayer(dims[i], dims[i + 1], options.heads, options.residual)
            for i in range(options.attention_layers)])
        self.attention_head = nn.Linear(self.embedding.num_fields * options.attention_dim, 1)
        self.mlp = MLP(self.flat_dim, options.hidden_units, out_dim=1, dropout=options.dropout,
                       batch_norm=options.batch_norm)

    can_represent = True

    def represent(self, batch, drop=None):
        """[B, H]: the attended fields beside the MLP's last hidden layer (the two heads' inputs)."""
        fields = self.embedding(batch, drop)
        return torch.cat([self.attention(fields).flatten(1), self.mlp.hidden(fields.flatten(1))], dim=1)

    def score(self, hidden):
        attended, deep = hidden.split([self.attention_head.in_features, self.mlp.layers[-1].in_features], dim=1)
        return (self.attention_head(attended) + self.mlp.layers[-1](deep)).squeeze(-1)

    @property
    def hidden_dim(self) -> int:
        return self.attention_head.in_features + self.mlp.layers[-1].in_features
