"""`genctr export RUN --format onnx | pt2`: a saved run's model outside genctr.

ONNX: one named input per column the model reads (`tokens.<field>`: int32 [rows] or [rows, L];
`values.<field>`: float32 [rows] for fields embedded as value × vector), one output
`probability` float32 [rows], the row count dynamic. The encoder stays with genctr: a client
encodes rows with the run's encoder (as `genctr serve` does) and feeds the columns.
`--drop-input` (RUN/model.drop.onnx): one more input, `drop` bool [rows, fields] (True: the
field gets its neutral embedding), and the output `logit` float32 [rows]: the forward pass that
test-time strategies (UTTSI, MATT) run, so that a server on the ONNX backend runs them through
onnxruntime too.
pt2: `torch.export` of the model itself, its input the Batch dataclass (a registered pytree).
"""

from __future__ import annotations

import logging
import warnings
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Literal

import numpy as np
import torch
from torch import nn

from genctr.data.batches import Batch, batch_of
from genctr.data.encode import FeatureEncoder
from genctr.data.encode_fast import columns_frame
from genctr.data.encoded import EncodedSplit
from genctr.errors import ConfigError, DataError
from genctr.files import check_writable
from genctr.models.base import CTRModel
from genctr.nn.embedding import FieldEmbedding
from genctr.runs import Run

ExportFormat = Literal["onnx", "pt2"]
# in an ONNX export's metadata; a served file of another version is exported again.
# 2: the weights' subnormal values zeroed (genctr.nn.subnormal: 6x faster passes over cold rows)
EXPORT_VERSION = "2"
VERSION_KEY = "genctr_export_version"


def value_fields(model: CTRModel) -> list[str]:
    """The numeric fields whose value (not only its bin token) the model reads."""
    names: set[str] = set()
    for module in model.modules():
        if isinstance(module, FieldEmbedding):
            names |= module.scaled
    return sorted(names)


class ColumnScorer(nn.Module):
    """Columns in a fixed order -> probabilities: the model behind flat, named inputs; with
    `drop`, one more input (the drop mask [rows, fields]) and logits out."""

    def __init__(self, model: CTRModel, tokens: list[str], values: list[str], drop: bool = False) -> None:
        super().__init__()
        self.model, self.tokens, self.values, self.drop = model, tokens, values, drop

    def input_names(self) -> list[str]:
        names = [f"tokens.{n}" for n in self.tokens] + [f"values.{n}" for n in self.values]
        return names + (["drop"] if self.drop else [])

    def output_name(self) -> str:
        return "logit" if self.drop else "probability"

    def columns(self, batch: Batch) -> tuple[torch.Tensor, ...]:
        """The inputs for a batch (with `drop`: no field dropped), as the export traces them."""
        columns = tuple(batch.tokens[n] for n in self.tokens) + tuple(batch.values[n] for n in self.values)
        if self.drop:
            columns += (torch.zeros(len(batch), self.model.embedding.num_fields, dtype=torch.bool),)
        return columns

    def forward(self, *columns: torch.Tensor) -> torch.Tensor:
        tokens = dict(zip(self.tokens, columns[:len(self.tokens)]))
        values = dict(zip(self.values, columns[len(self.tokens):len(self.tokens) + len(self.values)]))
        rows = columns[0].shape[0]
        batch = Batch(tokens, values, torch.zeros(rows, dtype=torch.float32))
        if self.drop:
            return self.model(batch, columns[-1]).float()
        return torch.sigmoid(self.model(batch).float())


def example_split(encoder: FeatureEncoder, rows: int = 4) -> EncodedSplit:
    """`rows` rows of missing values, encoded: the shapes and dtypes an export traces."""
    empty = {spec.source_column: [[] if spec.is_list else None] * rows for spec in encoder.schema.fields}
    return encoder.encode_frame(columns_frame(encoder.schema, empty), with_label=False)


def column_scorer(run: Run, drop: bool = False) -> ColumnScorer:
    return ColumnScorer(run.model, [s.name for s in run.encoder.schema.fields],
                        value_fields(run.model), drop).eval()


def default_export(run: Run, export_format: ExportFormat, drop_input: bool = False) -> Path:
    return run.folder / (f"model.drop.{export_format}" if drop_input else f"model.{export_format}")


def export_run(run: Run, export_format: ExportFormat, output: str | Path | None = None,
               drop_input: bool = False) -> Path:
    """Write the export (default: RUN/model.onnx, RUN/model.drop.onnx with `drop_input`, or
    RUN/model.pt2, replaced if there); a given output that already exists is refused (genctr
    never overwrites a file it did not make)."""
    if drop_input and export_format != "onnx":
        raise ConfigError("--drop-input is an option of --format onnx")
    target = Path(output) if output else default_export(run, export_format, drop_input)
    if output and target.exists():
        raise DataError(f"{target}: already exists; choose another --output (genctr does not "
                        "overwrite files it did not create)")
    check_writable(target, "the export file")
    batch = batch_of(example_split(run.encoder), slice(None))
    scorer = column_scorer(run, drop_input)
    rows = torch.export.Dim("rows", min=1)
    with torch.no_grad(), warnings.catch_warnings(), _quiet_registry():
        # torch's exporter notes about its own internals, not about the user's model
        warnings.filterwarnings("ignore", message=".*axis name.*")
        warnings.filterwarnings("ignore", category=FutureWarning, module="copyreg")
        if export_format == "onnx":
            columns = scorer.columns(batch)
            torch.onnx.export(scorer, columns, str(target), input_names=scorer.input_names(),
                              output_names=[scorer.output_name()], dynamo=True, verbose=False,
                              dynamic_shapes={"columns": tuple({0: rows} for _ in columns)})
            _stamp_version(target)
        elif export_format == "pt2":
            batch.group = None  # not an input of any model
            dynamic = [{n: {0: rows} for n in batch.tokens}, {n: {0: rows} for n in batch.values},
                       {0: rows}]  # the Batch pytree's children: tokens, values, label (group None)
            program = torch.export.export(run.model, (batch,), dynamic_shapes={"batch": dynamic})
            program._example_inputs = None  # not pickled into the file: it loads weights_only
            torch.export.save(program, str(target))
        else:
            raise ConfigError(f"export format {export_format!r}: choose onnx or pt2")
    return target


@contextmanager
def _quiet_registry() -> Iterator[None]:
    """Silence the ONNX exporter's note that optional torchvision operators are skipped: genctr
    exports no vision model, and a user saw three lines about a package it does not use."""
    registry = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry.level
    registry.setLevel(logging.ERROR)
    try:
        yield
    finally:
        registry.setLevel(level)


class OnnxScorer:
    """Scores encoded columns with onnxruntime (`genctr serve --backend onnx`): probabilities of
    a split's rows from RUN/model.onnx; `logits(batch, drop, rows)` from RUN/model.drop.onnx
    (the forward pass of the test-time strategies, Inference.forward)."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(path), options,
                                                    providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        # (input, "tokens" | "values", field) of each column input, once: a served batch's feed
        # is built per call
        self.plan = [(name, *name.partition(".")[::2]) for name in self.inputs if name != "drop"]
        self.output = self.session.get_outputs()[0].name
        drop = [i for i in self.session.get_inputs() if i.name == "drop"]
        self.fields = int(drop[0].shape[1]) if drop else None
        self._fed: tuple[weakref.ref, dict[str, np.ndarray]] | None = None  # see logits

    def _feed(self, tokens: dict, values: dict) -> dict[str, np.ndarray]:
        """The session's column inputs from columns (numpy arrays or CPU tensors)."""
        feed = {}
        for name, kind, field in self.plan:
            column = tokens[field] if kind == "tokens" else values[field]
            if isinstance(column, torch.Tensor):  # a view, without numpy's slower __array__ path
                column = column.numpy()
            feed[name] = np.ascontiguousarray(column)
        return feed

    def __call__(self, split: EncodedSplit) -> np.ndarray:
        return self.session.run([self.output], self._feed(split.tokens, split.values))[0]

    def logits(self, batch: Batch, drop: torch.Tensor | None, rows: torch.Tensor | None = None
               ) -> torch.Tensor:
        """logits [P] of the batch's rows `rows` (int64 [P], repeats allowed; None: each row
        once), fields in `drop` [P, F] neutral (None: none); needs the export with the drop
        input. The last batch's columns are kept as numpy arrays, so a strategy's passes over
        one batch (UTTSI's filtered pass, then its paths) convert them once and pick the
        paths' rows with numpy (a torch Batch.take cost ~4x as much on a served micro-batch)."""
        if self.fields is None:
            raise ConfigError("this ONNX export has no drop input (genctr export --drop-input)")
        if self._fed is None or self._fed[0]() is not batch:
            self._fed = weakref.ref(batch), self._feed(batch.tokens, batch.values)
        if rows is None:
            feed = dict(self._fed[1])
        else:
            picked = rows.numpy()
            feed = {name: column[picked] for name, column in self._fed[1].items()}
        feed["drop"] = (np.zeros((len(batch) if rows is None else len(rows), self.fields), dtype=bool)
                        if drop is None else np.ascontiguousarray(drop.numpy()))
        return torch.from_numpy(self.session.run([self.output], feed)[0])


def onnx_for_serving(run: Run, log: Callable[[str], None] = print, drop_input: bool = False) -> Path:
    """RUN/model.onnx (RUN/model.drop.onnx), exported again when missing, older than the
    run's weights, or with other inputs than this genctr's export has (another version's)."""
    from genctr.train import BEST_WEIGHTS

    path = default_export(run, "onnx", drop_input)
    if not path.is_file() or path.stat().st_mtime < (run.folder / BEST_WEIGHTS).stat().st_mtime \
            or _graph_of(path) != (column_scorer(run, drop_input).input_names(), EXPORT_VERSION):
        log(f"exporting the model to {path} (ONNX{', with the drop input' if drop_input else ''})")
        export_run(run, "onnx", drop_input=drop_input)
    return path


def _graph_of(path: Path) -> tuple[list[str], str | None]:
    """An ONNX file's input names and genctr export version (its graph only: weights stored
    beside it are not read)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    version = {p.key: p.value for p in model.metadata_props}.get(VERSION_KEY)
    return [i.name for i in model.graph.input], version


def _stamp_version(path: Path) -> None:
    """Record EXPORT_VERSION in the file's metadata (the graph rewritten, the weights file
    beside it left as torch wrote it)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    entry = model.metadata_props.add()
    entry.key, entry.value = VERSION_KEY, EXPORT_VERSION
    onnx.save(model, str(path))
