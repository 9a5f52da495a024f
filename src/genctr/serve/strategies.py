"""The inference strategies a server offers, each fitted once at start on the run's valid split.

A strategy is named as `describe()` names it: plain, temperature, uttsi@2.0 (budget),
matt@8 / random@8 / mcdropout@8 (passes). Plain needs nothing; any other needs the run's
dataset (for the valid split and the FrequencyIndex, kept in the run folder), so a server
that offers one loads the data once at start (`--data-dir` if it moved since training).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import torch

from genctr.data.batches import Batch
from genctr.errors import ConfigError
from genctr.runs import Run, moved_data
from genctr.serve.rows import RequestError
from genctr.testtime.evaluate import STRATEGIES, frequency_index, make_inference
from genctr.testtime.inference import Inference, InferenceOptions

REQUEST_KEYS = {"strategy", "budget", "paths"}


def _described(inference: dict) -> str:
    """InferenceOptions.model_validate(inference).describe(), remembered per distinct request
    object (a UTTSI request validated the whole options model each time: ~13 µs of the event
    loop per request); keys carry the value types, so 2 and 2.0 are validated apart."""
    try:
        key = tuple(sorted((k, type(v).__name__, v) for k, v in inference.items()))
        hash(key)
    except TypeError:  # an unhashable value (a list, an object): validated, and refused, below
        return InferenceOptions.model_validate(inference).describe()
    return _described_key(key)


@lru_cache(maxsize=256)
def _described_key(key: tuple) -> str:
    return InferenceOptions.model_validate({k: v for k, _, v in key}).describe()


def parse_spec(spec: str) -> InferenceOptions:
    """'uttsi@2.0' -> InferenceOptions(strategy=uttsi, budget=2.0); 'matt@8' -> paths=8."""
    name, _, number = spec.partition("@")
    if name in ("ensemble", "selective_ensemble"):
        raise ConfigError(f"--inference {spec!r}: ensembles are not served (they need their member "
                          "runs loaded beside this one); use genctr evaluate --members")
    try:
        if number and name in ("plain", "temperature"):
            raise ValueError(f"{name} takes no @number")
        options: dict[str, Any] = {"strategy": name}
        if number:
            options["budget" if name == "uttsi" else "paths"] = float(number) if name == "uttsi" else int(number)
        return InferenceOptions.model_validate(options)
    except ValueError:
        raise ConfigError(f"--inference {spec!r}: expected plain, temperature, uttsi@BUDGET, "
                          "matt@PATHS, random@PATHS or mcdropout@PATHS") from None


def fit_strategies(run: Run, specs: list[str], data_dir: str | Path | None = None,
                   log: Callable[[str], None] = print,
                   forward: Callable[[Batch, torch.Tensor | None], torch.Tensor] | None = None
                   ) -> dict[str, Inference]:
    """name -> fitted strategy; plain always. `forward`: the pass every strategy that can
    runs instead of the torch model, fitting included (the ONNX backend's
    OnnxScorer.logits over RUN/model.drop.onnx); MC-dropout keeps the torch model."""
    chosen = {o.describe(): o for o in map(parse_spec, ["plain", *specs])}
    fitted: dict[str, Inference] = {"plain": make_inference(chosen.pop("plain"))}
    if not chosen:
        return fitted
    data = moved_data(run.config.data, Path(data_dir).resolve()) if data_dir else run.config.data
    dataset = data.prepare()
    valid = dataset.splits["valid"]
    for name, options in chosen.items():
        index = (frequency_index(dataset, options.index, run.folder)
                 if STRATEGIES[options.strategy].uses_index else None)
        strategy = make_inference(options, index=index)
        if forward is not None and strategy.exported_forward:
            strategy.forward = forward
        strategy.fit(run.model, valid)
        strategy.warm_up(run.model, valid)  # the first request pays no compile or table build
        log(f"inference {name}: fitted on the valid split ({len(valid):,} rows)")
        fitted[name] = strategy
    return fitted


def requested(inference: Any, served: dict[str, Inference]) -> str:
    """The served strategy a request names: {"strategy": "uttsi", "budget": 2.0} -> uttsi@2.0."""
    if inference is None:
        return "plain"
    if not isinstance(inference, dict) or set(inference) - REQUEST_KEYS:
        raise RequestError(422, "'inference' must be an object with 'strategy' and, for uttsi, "
                           "'budget' or, for matt/random/mcdropout, 'paths'", field="inference")
    for key, value in inference.items():
        if isinstance(value, bool):  # JSON true is not the number 1
            raise RequestError(422, f"inference.{key}: {json.dumps(value)} is not a "
                               f"{'strategy name' if key == 'strategy' else 'number'}",
                               field=f"inference.{key}")
    try:
        name = _described(inference)
    except ValueError as err:
        first = err.errors()[0] if hasattr(err, "errors") else {}
        where = ".".join(str(p) for p in first.get("loc", ())) or "strategy"
        raise RequestError(422, f"inference.{where}: {first.get('msg', err)}",
                           field=f"inference.{where}") from None
    if name not in served:
        raise RequestError(422, f"inference {name!r} is not served; this server serves "
                           f"{sorted(served)}", field="inference")
    return name
