"""FM (Rendle, 2010): linear term + pairwise interactions of field embeddings."""

from genctr.models.base import CTRModel, FirstOrder
from genctr.nn.blocks import fm_interaction


class FM(CTRModel):
    name = "fm"

    def __init__(self, fields, options):
        super().__init__(fields, options)
        self.linear = FirstOrder(fields, options)

    def forward(self, batch, drop=None):
        return self.linear(batch, drop) + fm_interaction(self.embedding(batch, drop))
