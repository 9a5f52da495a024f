"""Sparse embedding updates (`train.sparse_embeddings`): a step touches only the table rows its
batch looked up, so its cost does not grow with the tables (up to 10M rows per field).

Dense Adam reads and writes every row of every table, its two moments included, at every step:
with a 10M-row table that is most of the step. Here the tables produce sparse gradients
(`nn.Embedding(sparse=True)`) and are updated by lazy Adam (torch.optim.SparseAdam: the moments
of a row advance only in the steps that use it, TensorFlow's LazyAdam), the rest of the network
by the usual fused Adam. Gradient clipping covers both (`clip_gradients`).
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn


def make_sparse(model: nn.Module) -> list[nn.Parameter]:
    """Switch every embedding table of `model` to sparse gradients; returns their weights."""
    tables = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    for table in tables:
        table.sparse = True
    return [t.weight for t in tables]


class SparseDenseAdam:
    """Lazy Adam for the embedding tables and Adam/AdamW for every other parameter, behind the
    one optimizer interface the trainer uses (param_groups, zero_grad, step, state_dict)."""

    def __init__(self, model: nn.Module, dense: type[torch.optim.Optimizer], lr: float,
                 **dense_options: Any) -> None:
        tables = {id(p) for p in make_sparse(model)}
        sparse_params = [p for p in model.parameters() if id(p) in tables]
        dense_params = [p for p in model.parameters() if id(p) not in tables]
        self.sparse = torch.optim.SparseAdam(sparse_params, lr=lr)
        self.dense = dense(dense_params, lr=lr, **dense_options) if dense_params else None

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [o for o in (self.sparse, self.dense) if o is not None]

    @property
    def param_groups(self) -> list[dict]:
        return [group for o in self.optimizers for group in o.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return {"sparse": self.sparse.state_dict(),
                "dense": None if self.dense is None else self.dense.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"sparse", "dense"}:
            raise ValueError("the checkpoint was saved without sparse_embeddings")
        self.sparse.load_state_dict(state["sparse"])
        if self.dense is not None:
            self.dense.load_state_dict(state["dense"])


def clip_gradients(parameters: Iterable[nn.Parameter], max_norm: float) -> torch.Tensor:
    """clip_grad_norm_ for a mix of dense and sparse gradients: the norm over every gradient
    (a sparse one coalesced first, so that a row looked up twice counts once)."""
    grads = []
    for p in parameters:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()
            grads.append(p.grad._values())
        else:
            grads.append(p.grad)
    if not grads:
        return torch.zeros(())
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.to(g.dtype))
    return total
