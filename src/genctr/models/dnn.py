"""DNN: an MLP over the concatenated field embeddings."""

from pydantic import Field

from genctr.models.base import CTRModel, ModelOptions
from genctr.nn.blocks import MLP


class DNNOptions(ModelOptions):
    """An MLP tower's options; models with a deep part extend these."""

    hidden_units: list[int] = Field(default_factory=lambda: [400, 400, 400])
    dropout: float = Field(0.0, ge=0, lt=1)
    batch_norm: bool = False


class DNN(CTRModel):
    name = "dnn"
    Options = DNNOptions

    def __init__(self, fields, options: DNNOptions):
        super().__init__(fields, options)
        self.mlp = MLP(self.flat_dim, options.hidden_units, out_dim=1, dropout=options.dropout,
                       batch_norm=options.batch_norm)

    can_represent = True

    def represent(self, batch, drop=None):
        return self.mlp.hidden(self.embedding(batch, drop).flatten(1))

    def score(self, hidden):
        return self.mlp.layers[-1](hidden).squeeze(-1)

    @property
    def hidden_dim(self) -> int:
        return self.mlp.layers[-1].in_features
