"""DeepFM (Guo et al., 2017): FM and a DNN sharing the field embeddings."""

import torch

from genctr.models.base import FirstOrder
from genctr.models.dnn import DNN, DNNOptions
from genctr.nn.blocks import fm_pairwise


class DeepFM(DNN):
    name = "deepfm"
    Options = DNNOptions

    def __init__(self, fields, options: DNNOptions):
        super().__init__(fields, options)
        self.linear = FirstOrder(fields, options)

    def represent(self, batch, drop=None):
        """[the DNN's last hidden layer, the FM bi-interaction vector (D), the linear term]: the
        FM part as a vector, so that a pre-training head sees the pairwise interactions."""
        fields = self.embedding(batch, drop)
        deep = self.mlp.hidden(fields.flatten(1))
        return torch.cat([deep, fm_pairwise(fields), self.linear(batch, drop).unsqueeze(1)], dim=1)

    def score(self, hidden):
        width = self.mlp.layers[-1].in_features
        return self.mlp.layers[-1](hidden[:, :width]).squeeze(-1) + hidden[:, width:].sum(dim=1)

    @property
    def hidden_dim(self) -> int:
        return self.mlp.layers[-1].in_features + self.embedding.dim + 1
