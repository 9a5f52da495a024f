"""LR: logistic regression on one weight per feature value."""

from genctr.models.base import CTRModel, FirstOrder
from genctr.nn.embedding import FieldEmbedding


class LR(CTRModel):
    name = "lr"

    def __init__(self, fields, options):
        super().__init__(fields, options)
        del self.embedding  # a linear model has no vector embeddings: its weights stand in
        self.linear = FirstOrder(fields, options)

    @property
    def embedding(self) -> FieldEmbedding:
        """The per-value weights (a 1-wide field embedding): what `drop`, field dropout and
        the test-time strategies address, as they address any backbone's embedding."""
        return self.linear.weights

    def forward(self, batch, drop=None):
        return self.linear(batch, drop)
