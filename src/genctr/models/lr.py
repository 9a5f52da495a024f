"""LR: logistic regression on one weight per feature value."""

from genctr.models.base import CTRModel, FirstOrder


class LR(CTRModel):
    name = "lr"

    def __init__(self, fields, options):
        super().__init__(fields, options)
        del self.embedding  # a linear model has no vector embeddings
        self.linear = FirstOrder(fields, options)

    def forward(self, batch, drop=None):
        return self.linear(batch, drop)
