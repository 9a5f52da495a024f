"""Fine-tuning from a pre-training run: full transfer into `hetegen` or into the denoiser's own
backbone (MAP-style), or embedding transfer (the pre-trained field tables initialise any
backbone's tables), frozen or not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from genctr.data.encode import FeatureEncoder
from genctr.errors import ConfigError
from genctr.models.base import CTRModel
from genctr.pretrain.hetegen import HeteGen, HeteGenOptions
from genctr.nn.embedding import field_infos
from genctr.pretrain.loop import load_pretrained

# `transfer: auto` freezes the transferred tables below this many labelled train rows and
# transfers the whole backbone above it: on ml1m-ctr (benchmarks/FINDINGS.md, label-scarce
# curve) frozen tables won at 8k labelled rows and full transfer at 80k.
AUTO_FROZEN_BELOW = 30_000

# a backbone's options that shape no parameter: full transfer takes the fine-tuning's value
# (small-data fine-tuning wants more dropout than pre-training had)
FINE_TUNING_KEYS = {"dropout"}


def resolve_transfer(transfer: str, labelled_rows: int) -> str:
    """The transfer mode a run uses: `auto` becomes frozen_embedding when labels are scarce,
    full otherwise (embedding when the model is not the pre-training's backbone: see
    transfer_pretrained); the other modes are returned as they are."""
    if transfer != "auto":
        return transfer
    return "frozen_embedding" if labelled_rows < AUTO_FROZEN_BELOW else "full"


def pretrained_model_options(model: dict[str, Any], folder: str | Path,
                             transfer: str = "full") -> dict[str, Any]:
    """The model block completed with the pre-trained architecture for full transfer: a
    `hetegen` model takes the transformer denoiser's options, the denoiser's own backbone its
    backbone_options (a key the user set to something else is an error, except the
    FINE_TUNING_KEYS, where the user's value wins); any other model, or `transfer: embedding`,
    is returned unchanged."""
    config, _, _ = load_pretrained(folder)
    denoiser = config.pretrain.denoiser
    if model["name"] == HeteGen.name:
        if denoiser.backbone != "transformer":
            raise ConfigError(f"model hetegen needs a transformer pre-training; {folder} pre-trained "
                              f"a '{denoiser.backbone}' backbone")
        pretrained = HeteGenOptions.from_denoiser(denoiser)
    elif model["name"] == denoiser.backbone and transfer in ("full", "auto"):
        pretrained = dict(denoiser.backbone_options)
        for key in FINE_TUNING_KEYS & pretrained.keys() & model.keys():
            if (model[key] > 0) != (pretrained[key] > 0):  # a Dropout layer more or less
                raise ConfigError(f"model.{key} is {model[key]!r} but the pre-training run {folder} "
                                  f"used {pretrained[key]!r}: a {key} may change for fine-tuning "
                                  "but not from or to 0 (that changes the layers)")
            pretrained.pop(key)
    else:
        return model
    for key in pretrained:
        if key in model and model[key] != pretrained[key]:
            raise ConfigError(f"model.{key} is {model[key]!r} but the pre-training run {folder} "
                              f"used {pretrained[key]!r}; leave it out to take the run's")
    return model | pretrained


def transfer_pretrained(model: CTRModel, folder: str | Path, encoder: FeatureEncoder,
                        freeze_embeddings: bool = False, transfer: str = "full") -> list[str]:
    """Load a pre-training run into `model`; returns what was transferred (for the log).

    Full transfer (into hetegen, or into the denoiser's own backbone): every parameter except
    the pre-training heads and the [MASK] vectors, batch-norm running statistics reset (they
    were collected on corrupted inputs). Embedding transfer: the field tables only;
    frozen_embedding also keeps them fixed (as `freeze_embeddings` does with any mode)."""
    _, pretrained_encoder, net = load_pretrained(folder)
    ours = {f.name: f.vocab_size for f in field_infos(encoder)}
    theirs = {f.name: f.vocab_size for f in field_infos(pretrained_encoder)}
    if ours != theirs:
        raise ConfigError(f"the pre-training run {folder} was encoded with other fields or "
                          f"vocabularies ({theirs}) than this run's data ({ours})")
    backbone = getattr(net, "backbone", None)
    if isinstance(model, HeteGen):
        model.denoiser.load_state_dict(net.denoiser.state_dict())
        model.label_head.load_state_dict(net.heads.label.state_dict())
        if net.balancer.log_difficulty is not None:
            model.log_difficulty.copy_(net.balancer.log_difficulty.detach())
        moved = ["denoiser", "label head", "log-difficulties"]
    elif backbone is not None and model.name == backbone.name and transfer == "full":
        moved = _load_matching(model, backbone)
    else:
        moved = []
        for table, weights in model.embedding.tables.items():
            source = net.embedding.tables[table].weight
            if source.shape != weights.weight.shape:
                raise ConfigError(f"embedding transfer: table '{table}' is {tuple(weights.weight.shape)} "
                                  f"here but {tuple(source.shape)} in {folder}; set embedding_dim "
                                  f"to the pre-training's ({source.shape[1]})")
            with torch.no_grad():
                weights.weight.copy_(source)
            moved.append(table)
    if freeze_embeddings or transfer == "frozen_embedding":
        for table in model.embedding.tables.values():
            table.weight.requires_grad_(False)
    return moved


def _load_matching(model: CTRModel, backbone: CTRModel) -> list[str]:
    """Copy every tensor of the same name and shape (not the learned [MASK] vectors)."""
    ours = model.state_dict()
    theirs = {k: v for k, v in backbone.state_dict().items()
              if k in ours and v.shape == ours[k].shape and "learned_neutral" not in k}
    missing = sorted(k for k in ours if k not in theirs and "learned_neutral" not in k
                     and not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    if missing:
        raise ConfigError(f"full transfer: the pre-trained {backbone.name} lacks {missing[:5]}; "
                          "the architectures differ")
    model.load_state_dict(theirs, strict=False)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
    return [f"{backbone.name}: every tensor of the same name and shape ({len(theirs)})"]
