"""FinalMLP (Mao et al., 2023): two MLP streams with feature gating, fused bilinearly."""

import torch
from pydantic import Field

from genctr.models.base import CTRModel, ModelOptions
from genctr.nn.blocks import MLP, BilinearFusion, FeatureSelection


class FinalMLPOptions(ModelOptions):
    stream1_units: list[int] = Field(default_factory=lambda: [400, 400, 400])
    stream2_units: list[int] = Field(default_factory=lambda: [800])
    stream1_dropout: float = Field(0.2, ge=0, lt=1)
    stream2_dropout: float = Field(0.1, ge=0, lt=1)
    batch_norm: bool = True
    feature_selection: bool = True
    selection_units: int = Field(800, ge=1)
    stream1_context: list[str] = []  # fields gating stream 1 (empty: a learned context)
    stream2_context: list[str] = []
    fusion_heads: int = Field(50, ge=1)


class FinalMLP(CTRModel):
    name = "finalmlp"
    Options = FinalMLPOptions

    def __init__(self, fields, options: FinalMLPOptions):
        super().__init__(fields, options)
        o = options
        self.stream1 = MLP(self.flat_dim, o.stream1_units, dropout=o.stream1_dropout,
                           batch_norm=o.batch_norm)
        self.stream2 = MLP(self.flat_dim, o.stream2_units, dropout=o.stream2_dropout,
                           batch_norm=o.batch_norm)
        self.context_index = [[self.embedding.field_index(n) for n in names]
                              for names in (o.stream1_context, o.stream2_context)]
        if o.feature_selection:
            self.selections = [
                FeatureSelection(self.flat_dim, len(idx) * o.embedding_dim or None, o.selection_units)
                for idx in self.context_index]
            self.select1, self.select2 = self.selections
            del self.selections
        self.fusion = BilinearFusion(self.stream1.out_dim, self.stream2.out_dim, o.fusion_heads)

    can_represent = True

    def represent(self, batch, drop=None):
        """[stream 1's output, stream 2's output]; the bilinear fusion is the output layer."""
        fields = self.embedding(batch, drop)
        flat = fields.flatten(1)
        x, y = flat, flat
        if self.options.feature_selection:
            contexts = [fields[:, idx].flatten(1) if idx else None for idx in self.context_index]
            x = self.select1(flat, contexts[0])
            y = self.select2(flat, contexts[1])
        return torch.cat([self.stream1(x), self.stream2(y)], dim=1)

    def score(self, hidden):
        split = self.stream1.out_dim
        return self.fusion(hidden[:, :split], hidden[:, split:])

    @property
    def hidden_dim(self) -> int:
        return self.stream1.out_dim + self.stream2.out_dim
