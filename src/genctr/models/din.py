"""DIN (Zhou et al., 2018): target attention of the candidate item over the behaviour sequence."""

import torch
from pydantic import Field

from genctr.errors import ConfigError
from genctr.models.base import CTRModel
from genctr.models.dnn import DNNOptions
from genctr.nn.blocks import MLP, TargetAttention
from genctr.schema import FieldKind


class DINOptions(DNNOptions):
    sequence_field: str | None = None  # default: the schema's first sequence field
    target_field: str | None = None  # default: the field whose vocabulary the sequence shares
    attention_units: list[int] = Field(default_factory=lambda: [64])


class DIN(CTRModel):
    name = "din"
    Options = DINOptions

    def __init__(self, fields, options: DINOptions):
        super().__init__(fields, options)
        sequences = [f for f in fields if f.kind is FieldKind.sequence]
        seq_name = options.sequence_field or (sequences[0].name if sequences else None)
        if seq_name is None:
            raise ConfigError("model 'din' needs a sequence field; the schema has none")
        info = fields[self.embedding.field_index(seq_name)]
        target = options.target_field or (info.table if info.table != info.name else None)
        if target is None:
            raise ConfigError(f"model 'din': set target_field (sequence '{seq_name}' shares no "
                              "vocabulary)")
        self.sequence_name = seq_name
        self.sequence_index = self.embedding.field_index(seq_name)
        self.target_index = self.embedding.field_index(target)
        self.attention = TargetAttention(options.embedding_dim, options.attention_units)
        self.mlp = MLP(self.flat_dim, options.hidden_units, out_dim=1, dropout=options.dropout,
                       batch_norm=options.batch_norm)

    can_represent = True

    def represent(self, batch, drop=None):
        fields = self.embedding(batch, drop)
        items, mask = self.embedding.sequence(batch, self.sequence_name)
        interest = self.attention(items, mask, fields[:, self.target_index])
        if drop is not None:  # a dropped history keeps its neutral embedding
            keep = ~drop[:, self.sequence_index].unsqueeze(-1)
            interest = torch.where(keep, interest, fields[:, self.sequence_index])
        fields = torch.cat([fields[:, :self.sequence_index], interest.unsqueeze(1),
                            fields[:, self.sequence_index + 1:]], dim=1)
        return self.mlp.hidden(fields.flatten(1))

    def score(self, hidden):
        return self.mlp.layers[-1](hidden).squeeze(-1)

    @property
    def hidden_dim(self) -> int:
        return self.mlp.layers[-1].in_features
