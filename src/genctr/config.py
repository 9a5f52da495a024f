"""Run configuration: which data, which model, how to train. Strict: unknown keys are errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from genctr.data.sources import SOURCES, Source, make_source
from genctr.data.store import EncodedDataset, prepare
from genctr.errors import ConfigError
import genctr.pretrain  # noqa: F401  (registers the `hetegen` model before configs name it)
from genctr.models import model_options
from genctr.rundir import validate_run_name
from genctr.schema import Strict, parse_model, read_yaml
from genctr.train import TrainConfig


# data keys that may change when a run is continued: where the cache lives and how it is keyed
# or chunked, never which rows it holds
DATA_RESUMABLE_KEYS = {"data.cache_dir", "data.verify_content", "data.options.chunk_rows"}


class DataConfig(Strict):
    source: str
    data_dir: str | None = None
    options: dict[str, Any] = {}
    cache_dir: str | None = ".cache/genctr"
    verify_content: bool = Field(False, description="key the encoded cache by each input file's "
                                 "SHA-256 instead of its path, size and modification time")

    @field_validator("source")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in SOURCES:
            raise ValueError(f"unknown source '{value}'; choose one of {sorted(SOURCES)}")
        return value

    def make_source(self) -> Source:
        return make_source(self.source, self.data_dir, **self.options)

    def prepare(self) -> EncodedDataset:
        """The encoded splits, from the cache when they are there."""
        return prepare(self.make_source(), self.cache_dir, verify_content=self.verify_content)


class RunConfig(Strict):
    """One training run. `model` is `{name: dnn, <that model's options>}`."""

    name: str | None = None
    data: DataConfig = Field(description="required: a run never falls back to synthetic data")
    model: dict[str, Any] = Field(default_factory=lambda: {"name": "dnn"})
    train: TrainConfig = Field(default_factory=TrainConfig)
    output_dir: str = "runs"
    init_from: str | None = Field(None, description="a pre-training run folder to fine-tune from")
    transfer: Literal["full", "embedding", "frozen_embedding", "auto"] = Field(
        "full", description="with init_from: full (the whole pre-trained backbone, when the model "
        "is the pre-training's denoiser backbone or hetegen), embedding (the field tables only), "
        "frozen_embedding (the field tables, kept fixed) or auto (frozen_embedding below "
        "AUTO_FROZEN_BELOW labelled train rows, full above; see README)")
    freeze_embeddings: bool = Field(False, description="with init_from: keep the transferred "
                                    "embedding tables fixed")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str | None) -> str | None:
        return None if value is None else validate_run_name(value)

    @field_validator("model")
    @classmethod
    def _valid_model(cls, value: dict[str, Any]) -> dict[str, Any]:
        if "name" not in value:
            raise ValueError("model needs a 'name'")
        model_options(value["name"], {k: v for k, v in value.items() if k != "name"})
        return value

    @property
    def model_name(self) -> str:
        return self.model["name"]

    @property
    def model_kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in self.model.items() if k != "name"}

    def run_name(self) -> str:
        return self.name or f"{self.data.source}-{self.model_name}-seed{self.train.seed}"


def resolve_paths(data: Any, config_file: str | Path) -> Any:
    """Make a config's paths absolute before it is validated and saved, so a saved run works
    from any directory: input paths the user wrote (data.data_dir, data.options.schema_file,
    init_from) are relative to the config file's folder; data.cache_dir to the working
    directory, like every output path."""
    if not isinstance(data, dict):
        return data
    base = Path(config_file).resolve().parent
    against = lambda value, root: str((root / value).resolve()) if isinstance(value, str) else value  # noqa: E731
    data = dict(data)
    if isinstance(data.get("data"), dict):
        data["data"] = resolve_data_paths(data["data"], base)
    if "init_from" in data:
        data["init_from"] = against(data["init_from"], base)
    return data


def resolve_data_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """data_dir and options.schema_file against `base`, cache_dir against the working directory."""
    data = {"cache_dir": DataConfig.model_fields["cache_dir"].default} | data
    if isinstance(data.get("data_dir"), str):
        data["data_dir"] = str((base / data["data_dir"]).resolve())
    if isinstance(data.get("cache_dir"), str):
        data["cache_dir"] = str(Path(data["cache_dir"]).resolve())
    options = data.get("options")
    if isinstance(options, dict) and isinstance(options.get("schema_file"), str):
        data["options"] = options | {"schema_file": str((base / options["schema_file"]).resolve())}
    return data


def load_run_config(path: str | Path) -> RunConfig:
    try:
        return parse_model(RunConfig, resolve_paths(read_yaml(path), path), str(path))
    except ConfigError:
        raise
    except ValueError as err:  # a model-option error raised inside a validator
        raise ConfigError(f"{path}: {err}") from None
