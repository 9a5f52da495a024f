"""Fine-tuning from a pre-training run: full transfer into `hetegen`, or embedding transfer
(the pre-trained field tables initialise any backbone's tables, MAP-style), frozen or not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from genctr.data.encode import FeatureEncoder
from genctr.errors import ConfigError
from genctr.models.base import CTRModel
from genctr.pretrain.hetegen import HeteGen, HeteGenOptions
from genctr.nn.embedding import field_infos
from genctr.pretrain.loop import load_pretrained


def pretrained_model_options(model: dict[str, Any], folder: str | Path) -> dict[str, Any]:
    """A `hetegen` model block completed with the pre-trained denoiser's options (a key the
    user set to something else is an error); other models are returned unchanged."""
    if model["name"] != HeteGen.name:
        return model
    config, _, _ = load_pretrained(folder)
    pretrained = HeteGenOptions.from_denoiser(config.pretrain.denoiser)
    for key in pretrained:
        if key in model and model[key] != pretrained[key]:
            raise ConfigError(f"model.{key} is {model[key]!r} but the pre-training run {folder} "
                              f"used {pretrained[key]!r}; leave it out to take the run's")
    return model | pretrained


def transfer_pretrained(model: CTRModel, folder: str | Path, encoder: FeatureEncoder,
                        freeze_embeddings: bool = False) -> list[str]:
    """Load a pre-training run into `model`; returns what was transferred (for the log)."""
    _, pretrained_encoder, net = load_pretrained(folder)
    ours = {f.name: f.vocab_size for f in field_infos(encoder)}
    theirs = {f.name: f.vocab_size for f in field_infos(pretrained_encoder)}
    if ours != theirs:
        raise ConfigError(f"the pre-training run {folder} was encoded with other fields or "
                          f"vocabularies ({theirs}) than this run's data ({ours})")
    if isinstance(model, HeteGen):
        model.denoiser.load_state_dict(net.denoiser.state_dict())
        model.label_head.load_state_dict(net.heads.label.state_dict())
        if net.balancer.log_difficulty is not None:
            model.log_difficulty.copy_(net.balancer.log_difficulty.detach())
        moved = ["denoiser", "label head", "log-difficulties"]
    else:
        moved = []
        for table, weights in model.embedding.tables.items():
            source = net.denoiser.embedding.tables[table].weight
            if source.shape != weights.weight.shape:
                raise ConfigError(f"embedding transfer: table '{table}' is {tuple(weights.weight.shape)} "
                                  f"here but {tuple(source.shape)} in {folder}; set embedding_dim "
                                  f"to the pre-training's d_model ({source.shape[1]})")
            with torch.no_grad():
                weights.weight.copy_(source)
            moved.append(table)
    if freeze_embeddings:
        for table in model.embedding.tables.values():
            table.weight.requires_grad_(False)
    return moved
