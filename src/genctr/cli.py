"""The `genctr` command."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer
import yaml
from rich.console import Console
from rich.table import Table

from genctr.data.sources import SOURCES, make_source
from genctr.data.stats import split_stats, vocabulary_sizes
from genctr.data.store import prepare
from genctr.errors import ConfigError, GenctrError
from genctr.runtime import DEVICE_HELP
from genctr.schema import parse_model

# plain click help (rich_markup_mode=None): the rich renderer shows every flag as `--resume <bool>`
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None,
                  help="CTR prediction: backbones, generative pre-training, test-time inference.")
datasets_app = typer.Typer(help="List the dataset sources, or print a dataset's statistics.",
                           invoke_without_command=True, rich_markup_mode=None)
app.add_typer(datasets_app, name="datasets")
console = Console(width=None if sys.stdout.isatty() else 140)

DEFAULT_CACHE = Path(".cache/genctr")
MIN_SEGMENT_CLASS = 100  # a segment AUC over fewer positives (or negatives) is not reported as a result
DataDir = typer.Option(None, "--data-dir", help="folder (or file) holding the raw dataset")
CacheDir = typer.Option(DEFAULT_CACHE, "--cache-dir", help="where encoded splits are cached")
Options = typer.Option([], "--option", "-o", help="source option KEY=VALUE (repeatable)")
Device = typer.Option("auto", "--device", help=DEVICE_HELP)


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """KEY=VALUE pairs; values are read as YAML scalars/lists (rows=1000, fractions=[.8,.1,.1])."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option {pair!r}: expected KEY=VALUE")
        options[key.strip()] = yaml.safe_load(value)
    return options


@datasets_app.callback()
def datasets(ctx: typer.Context) -> None:
    """List every source and how to obtain its data."""
    if ctx.invoked_subcommand is not None:
        return
    table = Table("source", "what it is", "how to obtain", show_lines=True)
    for name, cls in SOURCES.items():
        table.add_row(name, cls.summary, cls.how_to_obtain)
    console.print(table)


@datasets_app.command("stats")
def datasets_stats(name: str, data_dir: Optional[Path] = DataDir, cache_dir: Path = CacheDir,
                   option: list[str] = Options) -> None:
    """Rows, positive rate and segment sizes of each split, and vocabulary sizes."""
    source = make_source(name, data_dir, **parse_options(option))
    started = time.perf_counter()
    dataset = prepare(source, cache_dir)
    console.print(f"[bold]{name}[/bold]: {how_prepared(dataset, time.perf_counter() - started)}")
    print_stats(dataset)


def how_prepared(dataset, seconds: float) -> str:
    """'encoded in 3.2 s into X' or 'loaded from cache X': a cache hit is not an encoding."""
    if dataset.from_cache:
        return f"loaded from cache {dataset.folder} in {seconds:.2f} s"
    return f"encoded in {seconds:.2f} s into {dataset.folder}"


@datasets_app.command("example")
def datasets_example(folder: Path, rows: int = typer.Option(20_000, "--rows", min=100),
                     seed: int = typer.Option(0, "--seed")) -> None:
    """Write FOLDER/clicks.csv, an example click log for configs/example-tabular.yaml."""
    from genctr.data.example import write_example

    path = write_example(folder, rows, seed)
    console.print(f"wrote {rows:,} rows to {path}; train on them with "
                  "`.venv/bin/genctr train configs/example-tabular.yaml` (its data_dir is "
                  "../data/example, relative to the config file)")


def print_stats(dataset) -> None:
    records = split_stats(dataset)
    segments = sorted({s for r in records for s in r["segments"]})
    table = Table("split", "rows", "positives", "positive rate", *segments)
    for r in records:
        cells = [f"{r['segments'][s]:,} ({r['segments'][s] / r['rows']:.1%})" for s in segments]
        table.add_row(r["split"], f"{r['rows']:,}", f"{r['positives']:,}",
                      f"{r['positive_rate']:.2%}", *cells)
    console.print(table)
    sizes = vocabulary_sizes(dataset)
    console.print("vocabulary sizes (incl. padding and OOV): "
                  + ", ".join(f"{k} {v:,}" for k, v in sizes.items()))


@app.command()
def encode(name: str, data_dir: Optional[Path] = DataDir, cache_dir: Path = CacheDir,
           option: list[str] = Options,
           verify_content: bool = typer.Option(False, "--verify-content", help=(
               "key the cache by each input file's SHA-256 (reads every byte) instead of its "
               "path, size and modification time"))) -> None:
    """Encode a dataset into the cache (fit on train, transform every split; `-o stream=true`
    for a tabular source encodes chunk by chunk, out of core)."""
    started = time.perf_counter()
    dataset = prepare(make_source(name, data_dir, **parse_options(option)), cache_dir,
                      verify_content=verify_content)
    console.print(f"{name}: {sum(len(s) for s in dataset.splits.values()):,} rows "
                  f"{how_prepared(dataset, time.perf_counter() - started)}")


def print_metrics(metrics: dict[str, Any], title: str) -> None:
    """Overall metrics per split, then per-segment AUC/logloss."""
    table = Table("split", "AUC", "logloss", "gAUC", "pred/obs CTR", "ECE", "rows", title=title)
    for split, m in metrics.items():
        if split == "training":
            continue
        gauc = m.get("gauc")
        table.add_row(split, f"{m['auc']:.5f}", f"{m['logloss']:.5f}",
                      "" if gauc is None else f"{gauc:.5f}", f"{m['predicted_over_observed']:.3f}",
                      f"{m['ece']:.4f}", f"{m['rows']:,}")
    console.print(table)
    segments = {s: v for s, v in metrics.get("test", {}).get("segments", {}).items()}
    if segments:
        seg_table = Table("test segment", "AUC", "logloss", "rows", "positives",
                          caption=f"* fewer than {MIN_SEGMENT_CLASS} positives or negatives: "
                                  "the AUC is noise")
        for name, v in segments.items():
            positives = v.get("positives")
            thin = positives is not None and min(positives, v["rows"] - positives) < MIN_SEGMENT_CLASS
            seg_table.add_row(name + (" *" if thin else ""), f"{v['auc']:.5f}", f"{v['logloss']:.5f}",
                              f"{v['rows']:,}", "" if positives is None else f"{positives:,}")
        console.print(seg_table)


@app.command()
def train(config_file: Path, output: Optional[Path] = typer.Option(None, "--output",
          help="run folder (default: OUTPUT_DIR/NAME from the config)"),
          resume: bool = typer.Option(False, "--resume", metavar="",
                                      help="continue the run in the folder (a killed or finished run)"),
          overwrite: bool = typer.Option(False, "--overwrite", metavar="",
                                         help="replace an existing run, once the new one has succeeded"),
          init_from: Optional[Path] = typer.Option(
              None, "--init-from", help="fine-tune from a pre-training run (genctr pretrain)")) -> None:
    """Train one run from a YAML config; saves config, encoder, weights, history, metrics."""
    from genctr.config import load_run_config
    from genctr.runs import train_run

    config = load_run_config(config_file)
    if init_from is not None:
        config = config.model_copy(update={"init_from": str(init_from.resolve())})
    run, state, metrics = train_run(config, output, resume=resume, overwrite=overwrite,
                                    log=console.print)
    print_metrics(metrics, f"{config.model_name} on {config.data.source}, best epoch "
                           f"{state.best_epoch} (run saved in {run.folder})")


@app.command()
def evaluate(run_dir: Path, split: list[str] = typer.Option(["valid", "test"], "--split"),
             inference: str = typer.Option("plain", "--inference",
                                           help="plain | temperature | matt | random | mcdropout | uttsi "
                                                "| ensemble | selective_ensemble"),
             budget: Optional[float] = typer.Option(None, "--budget", help="uttsi: average passes per instance"),
             paths: Optional[int] = typer.Option(None, "--paths", help="matt/random/mcdropout: passes per instance"),
             members: list[Path] = typer.Option([], "--members", help="ensemble, selective_ensemble: "
                                                "the other runs (same task), one per option"),
             option: list[str] = typer.Option([], "--option", "-o",
                                              help="inference option KEY=VALUE (repeatable; e.g. mix=0.5, "
                                                   "confidence.quantile=0.9)"),
             measure_latency: bool = typer.Option(False, "--latency", metavar="",
                                                  help="also time p50/p99 latency"),
             data_dir: Optional[Path] = typer.Option(
                 None, "--data-dir", help="the dataset's folder, if it moved since training"),
             device: str = Device) -> None:
    """Evaluate a saved run on its dataset's splits, with plain or test-time inference."""
    from genctr.runs import evaluate_split, load_run

    run = load_run(run_dir, data_dir, device)
    dataset = run.config.data.prepare()
    unknown = [s for s in split if s not in dataset.splits]
    if unknown:
        raise ConfigError(f"--split {', '.join(unknown)}: no such split; the dataset has "
                          f"{sorted(dataset.splits)}")
    if members and inference not in ("ensemble", "selective_ensemble"):
        raise ConfigError(f"--members: only for --inference ensemble or selective_ensemble, not {inference}")
    if inference == "plain" and budget is None and paths is None and not option and not measure_latency:
        size = run.config.train.eval_batch_size
        metrics = {s: evaluate_split(run.model, dataset.splits[s], size) for s in split}
        print_metrics(metrics, f"{run.config.model_name} from {run_dir}")
        return
    from genctr.runs import evaluate_run_inference
    from genctr.testtime.inference import InferenceOptions

    chosen = nested_options(parse_options(option)) | {"strategy": inference}
    chosen |= {k: v for k, v in (("budget", budget), ("paths", paths)) if v is not None}
    if members:
        chosen["members"] = 1 + len(members)
    options = parse_model(InferenceOptions, chosen, "--inference/--option")
    result = evaluate_run_inference(run, dataset, options, tuple(split), measure_latency,
                                    members=members)
    print_metrics({s: result[s] for s in split},
                  f"{run.config.model_name} from {run_dir}, inference {result['strategy']}")
    console.print("average forward passes per instance: " + ", ".join(
        f"{s} {result[s]['avg_cost']:.3f}" for s in split))
    if "latency" in result:
        console.print("latency (ms): " + ", ".join(f"{k} {v:.2f}" for k, v in result["latency"].items()))


def nested_options(flat: dict[str, Any]) -> dict[str, Any]:
    """{'confidence.quantile': 0.9} -> {'confidence': {'quantile': 0.9}}."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        target = nested
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return nested


@app.command()
def predict(run_dir: Path, input_file: Path, output_file: Path,
            separator: str = typer.Option(",", "--separator", help="field separator of a text "
                                          "input file (e.g. $'\\t' for tab-separated rows)"),
            device: str = Device) -> None:
    """Score raw CSV/Parquet rows with a saved run; writes the rows plus `probability`, and
    OUTPUT_FILE.unseen.json with the share of never-seen values per field."""
    from genctr.runs import load_run, predict_file

    separator = {"\\t": "\t", "tab": "\t"}.get(separator, separator)
    rows, unseen = predict_file(load_run(run_dir, device=device), input_file, output_file, separator=separator,
                                log=lambda line: print(line, file=sys.stderr))
    print("unseen values per field: " + ", ".join(f"{k} {v:.1%}" for k, v in unseen.items()),
          file=sys.stderr)
    console.print(f"wrote {rows:,} probabilities to {output_file} (unseen-value shares in "
                  f"{output_file}.unseen.json)")


def _command_line(context: typer.Context, leave_out: set[str], overrides: dict[str, Any]) -> list[str]:
    """The running command's arguments and options as a command line (how `serve --workers`
    starts its workers with its own settings): every parameter the command declares is passed
    on, so an option added to it later is never left behind."""
    line: list[str] = []
    for param in context.command.params:
        value = overrides.get(param.name, context.params[param.name])
        if param.name in leave_out or value is None:
            continue
        if param.param_type_name == "argument":  # typer's own click: no isinstance to test
            line.append(str(value))
        elif param.is_flag:
            line += [param.opts[0]] if value else param.secondary_opts[:1]
        else:
            for item in value if param.multiple else [value]:
                line += [param.opts[0], str(item)]
    return line


@app.command()
def serve(context: typer.Context, run_dir: Path,
          host: str = typer.Option("127.0.0.1", "--host", help="address to listen on"),
          port: int = typer.Option(8000, "--port", min=0, max=65535),
          max_rows: int = typer.Option(4096, "--max-rows", min=1, help="rows in one request"),
          max_batch_rows: int = typer.Option(4096, "--max-batch-rows", min=1,
                                             help="rows in one forward pass (micro-batch)"),
          max_wait_ms: float = typer.Option(2.0, "--max-wait-ms", min=0.0, help="how long the "
                                            "first request of a micro-batch waits for others"),
          max_body_mb: float = typer.Option(8.0, "--max-body-mb", min=0.001,
                                            help="largest request body"),
          inference: list[str] = typer.Option([], "--inference", help="a strategy to offer besides "
                                              "plain (repeatable): temperature, uttsi@BUDGET, matt@PATHS, "
                                              "random@PATHS, mcdropout@PATHS; fitted on the valid split at start"),
          data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="the dataset's folder, "
                                                  "if it moved since training (with --inference)"),
          backend: str = typer.Option("torch", "--backend", help="torch, or onnx: requests "
                                      "scored by onnxruntime (RUN/model.onnx, and for the "
                                      "--inference strategies but mcdropout RUN/model.drop.onnx; "
                                      "exported if missing or older than the weights)"),
          threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads of a "
                                                "forward pass (torch and onnxruntime; default: "
                                                "their own, one per core; with --workers, the "
                                                "cores shared out between the workers)"),
          freeze_gc: bool = typer.Option(True, "--freeze-gc/--no-freeze-gc", help="exempt what "
                                         "loads at start from Python's cyclic garbage collector "
                                         "(its full pauses otherwise scan it)"),
          workers: int = typer.Option(1, "--workers", min=1, help="serving processes on one "
                                      "port, each with its own copy of the run (one process "
                                      "answers about one core's worth of requests)"),
          listen_fd: Optional[int] = typer.Option(None, "--listen-fd", hidden=True,
                                                  help="a worker: serve on this inherited socket"),
          device: str = Device) -> None:
    """HTTP scoring service over a saved run: POST /predict (raw rows), GET /health, GET /metrics."""
    from genctr.runs import load_run
    from genctr.serve.app import ServeOptions, create_app, run_server
    from genctr.serve.export import OnnxScorer, onnx_for_serving
    from genctr.serve.strategies import fit_strategies
    from genctr.serve.workers import supervise

    if backend not in ("torch", "onnx"):
        raise ConfigError(f"--backend {backend!r}: choose torch or onnx")
    if workers > 1:
        if threads is None:  # one forward thread per core otherwise, in every worker
            threads = max(1, (os.cpu_count() or 1) // workers)
        worker_args = _command_line(context, leave_out={"host", "port", "workers", "listen_fd"},
                                    overrides={"threads": threads})
        code = supervise(worker_args, workers, host, port, console.print)
        console.print("stopped (requests in flight were answered)" if code == 0
                      else "stopped: a worker failed")
        raise typer.Exit(code)
    options = ServeOptions(max_rows=max_rows, max_batch_rows=max_batch_rows,
                           max_wait_ms=max_wait_ms, max_body_bytes=int(max_body_mb * 1024 * 1024),
                           freeze_gc=freeze_gc)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    run = load_run(run_dir, device=device)
    plain = forward = None
    if backend == "onnx":
        plain = OnnxScorer(onnx_for_serving(run, log=console.print), threads)
        if inference:  # the strategies' passes (with a drop mask) through onnxruntime too
            forward = OnnxScorer(onnx_for_serving(run, console.print, drop_input=True), threads).logits
    api = create_app(run, options, fit_strategies(run, inference, data_dir, console.print, forward), plain)
    if listen_fd is None:
        console.print(f"serving {run_dir} on http://{host}:{port} (POST /predict, GET /health, GET /metrics)")
    run_server(api, host, port, listen_fd)
    if listen_fd is None:
        console.print("stopped (requests in flight were answered)")


@app.command("export")
def export_model(run_dir: Path,
                 export_format: str = typer.Option("onnx", "--format", help="onnx or pt2"),
                 output: Optional[Path] = typer.Option(None, "--output", help="the file to write "
                                                       "(default RUN/model.onnx, RUN/model.drop.onnx "
                                                       "or RUN/model.pt2)"),
                 drop_input: bool = typer.Option(False, "--drop-input", help="onnx: one more input, "
                                                 "drop bool [rows, fields] (True: the field's neutral "
                                                 "embedding), and output logit: the test-time "
                                                 "strategies' forward pass")) -> None:
    """Export a saved run's model: ONNX (named inputs per encoded column, output probability)
    or a torch.export program (pt2) taking the Batch."""
    from genctr.runs import load_run
    from genctr.serve.export import export_run

    if export_format not in ("onnx", "pt2"):
        raise ConfigError(f"--format {export_format!r}: choose onnx or pt2")
    path = export_run(load_run(run_dir), export_format, output, drop_input)
    console.print(f"wrote {path}")


@app.command()
def pretrain(config_file: Path, output: Optional[Path] = typer.Option(
        None, "--output", help="run folder (default: OUTPUT_DIR/NAME from the config)"),
        resume: bool = typer.Option(False, "--resume", metavar="",
                                    help="continue the pre-training in the folder (a killed one)"),
        overwrite: bool = typer.Option(False, "--overwrite", metavar="",
                                       help="replace an existing pre-training once the new one has succeeded")
        ) -> None:
    """Generative pre-training (HeteGenCTR, or any backbone as the denoiser); logs per-field
    losses and weights."""
    from genctr.pretrain.loop import load_pretrain_config, pretrain_run

    config = load_pretrain_config(config_file)
    folder, _, history = pretrain_run(config, output, log=console.print, overwrite=overwrite,
                                      resume=resume)
    console.print(f"pre-training saved in {folder} ({len(history)} epochs, median "
                  f"{sorted(h['epoch_seconds'] for h in history)[len(history) // 2]:.1f} s/epoch); "
                  f"per-field summary {folder / 'fields.md'}, plot {folder / 'field_weights.png'}")
    console.print((folder / "fields.md").read_text())


@app.command("run")
def run_matrix(experiment_file: Path,
               model: list[str] = typer.Option([], "--model", help="run only this model label (repeatable)"),
               seed: list[int] = typer.Option([], "--seed", help="run only this seed (repeatable)"),
               pretrain: list[str] = typer.Option([], "--pretrain", help="run only cells fine-tuned "
                                                  "from this pre-training label, or none (repeatable)")
               ) -> None:
    """Run an experiment matrix (tasks × models × seeds), skipping recorded cells; --model,
    --seed and --pretrain run part of it now (the rest stays for a later run)."""
    from genctr.experiment import CellFilter, load_experiment, run_experiment

    experiment = load_experiment(experiment_file)
    ran = run_experiment(experiment, log=console.print,
                         only=CellFilter(tuple(model), tuple(seed), tuple(pretrain)))
    console.print(f"{ran} cell(s) run; records in {experiment.results}. "
                  "Render the report with `genctr report`.")


@app.command()
def report(benchmarks_dir: Path = typer.Option(Path("benchmarks"), "--benchmarks-dir")) -> None:
    """Render benchmarks/RESULTS.md from the records in benchmarks/results/."""
    from genctr.report import write_results_markdown

    if not (benchmarks_dir / "results").is_dir():
        raise ConfigError(f"{benchmarks_dir / 'results'}: no such folder; run `genctr report` from "
                          "the repository root or pass --benchmarks-dir")
    console.print(f"wrote {write_results_markdown(benchmarks_dir)}")


@app.command()
def demo(cache_dir: Path = CacheDir) -> None:
    """Run the main job on built-in synthetic data."""
    from genctr.demo import run_demo

    run_demo(console, cache_dir)


def main() -> None:
    """Entry point: input errors print one clear line instead of a traceback."""
    try:
        app()
    except GenctrError as err:
        console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
        sys.exit(2)
