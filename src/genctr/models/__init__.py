"""The backbone zoo, chosen by name.

Models defined outside `models/` register themselves with `register_model`: the fine-tuned
HeteGen network lives with pre-training (genctr.pretrain.hetegen), so that `models/` never
imports `pretrain/`; importing `genctr.pretrain` registers it.
"""

from __future__ import annotations

from typing import Any

from genctr.errors import ConfigError
from genctr.models.autoint import AutoIntPlus
from genctr.models.base import CTRModel, ModelOptions
from genctr.models.dcnv2 import DCNv2
from genctr.models.deepfm import DeepFM
from genctr.models.din import DIN
from genctr.models.dnn import DNN
from genctr.models.finalmlp import FinalMLP
from genctr.models.fm import FM
from genctr.models.lr import LR
from genctr.models.widedeep import WideDeep
from genctr.nn.embedding import FieldInfo
from genctr.schema import parse_model

MODELS: dict[str, type[CTRModel]] = {
    cls.name: cls for cls in (LR, FM, DNN, WideDeep, DeepFM, DCNv2, AutoIntPlus, FinalMLP, DIN)
}


def register_model(cls: type[CTRModel]) -> type[CTRModel]:
    """Add a model defined above this layer to the registry (usable as a class decorator)."""
    MODELS[cls.name] = cls
    return cls


def model_options(name: str, options: dict[str, Any]) -> ModelOptions:
    """Validate a model's options (unknown keys are errors naming the key)."""
    if name not in MODELS:
        raise ConfigError(f"unknown model '{name}'; choose one of {sorted(MODELS)}")
    return parse_model(MODELS[name].Options, options, f"options of model '{name}'")


def build_model(name: str, fields: list[FieldInfo], options: dict[str, Any] | None = None) -> CTRModel:
    return MODELS[name](fields, model_options(name, options or {}))


__all__ = ["MODELS", "CTRModel", "build_model", "model_options", "register_model"]
