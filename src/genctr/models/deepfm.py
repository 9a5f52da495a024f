"""DeepFM (Guo et al., 2017): FM and a DNN sharing the field embeddings."""

from genctr.models.base import FirstOrder
from genctr.models.dnn import DNN, DNNOptions
from genctr.nn.blocks import fm_interaction


class DeepFM(DNN):
    name = "deepfm"
    Options = DNNOptions

    def __init__(self, fields, options: DNNOptions):
        super().__init__(fields, options)
        self.linear = FirstOrder(fields, options)

    def forward(self, batch, drop=None):
        fields = self.embedding(batch, drop)
        deep = self.mlp(fields.flatten(1)).squeeze(-1)
        return deep + fm_interaction(fields) + self.linear(batch, drop)
