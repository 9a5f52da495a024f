"""Wide & Deep (Cheng et al., 2016): a linear (wide) part plus a DNN (deep) part."""

import torch

from genctr.models.base import FirstOrder
from genctr.models.dnn import DNN, DNNOptions


class WideDeep(DNN):
    name = "widedeep"
    Options = DNNOptions

    def __init__(self, fields, options: DNNOptions):
        super().__init__(fields, options)
        self.linear = FirstOrder(fields, options)

    def represent(self, batch, drop=None):
        """[the deep tower's last hidden layer, the wide term] (the wide term as one column)."""
        return torch.cat([super().represent(batch, drop), self.linear(batch, drop).unsqueeze(1)], dim=1)

    def score(self, hidden):
        return super().score(hidden[:, :-1]) + hidden[:, -1]

    @property
    def hidden_dim(self) -> int:
        return super().hidden_dim + 1
