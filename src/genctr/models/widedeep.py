"""Wide & Deep (Cheng et al., 2016): a linear (wide) part plus a DNN (deep) part."""

from genctr.models.base import FirstOrder
from genctr.models.dnn import DNN, DNNOptions


class WideDeep(DNN):
    name = "widedeep"
    Options = DNNOptions

    def __init__(self, fields, options: DNNOptions):
        super().__init__(fields, options)
        self.linear = FirstOrder(fields, options)

    def forward(self, batch, drop=None):
        return super().forward(batch, drop) + self.linear(batch, drop)
