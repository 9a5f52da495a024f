"""Issue 13: genctr never loses or corrupts a user's files, every fault path is one line with
exit 2, and no input gives a silently wrong number. One test (or more) per numbered item."""

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml

from genctr.files import exclusive_lock
from helpers import genctr, one_line_error
from genctr.metrics import auc
from genctr.rundir import LOCK

SCHEMA = {"name": "mine", "label": {"column": "y"}, "group": "user",
          "fields": [{"name": "user", "kind": "id"}, {"name": "item", "kind": "id"},
                     {"name": "amount", "kind": "numeric", "bins": 4}],
          "segments": [{"name": "cold", "field": "user", "max_train_rows": 0}]}


def click_rows(n: int = 600, seed: int = 0, users: int = 40, positive_rate: float = 0.4) -> pl.DataFrame:
    """Rows with a learnable signal (item parity and amount), ISO timestamps in random order."""
    rng = np.random.default_rng(seed)
    item = rng.integers(0, 30, n)
    amount = rng.exponential(5, n).round(2)
    logit = np.log(positive_rate / (1 - positive_rate)) + 1.5 * (item % 2) - 0.1 * amount + 0.5
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    stamps = [(start + timedelta(hours=int(h))).strftime("%Y-%m-%dT%H:%M:%SZ") for h in rng.permutation(n)]
    return pl.DataFrame({"user": [f"u{u}" for u in rng.integers(0, users, n)],
                         "item": [f"i{i}" for i in item], "amount": amount, "y": y,
                         "time": stamps})


def write_dataset(folder: Path, rows: pl.DataFrame | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "schema.yaml").write_text(yaml.safe_dump(SCHEMA))
    (rows if rows is not None else click_rows()).write_csv(folder / "rows.csv")
    return folder


def write_config(path: Path, data_dir: str = "data", **overrides) -> Path:
    config = {"name": "r1",
              "data": {"source": "tabular", "data_dir": data_dir, "cache_dir": str(path.parent / "cache"),
                       "options": {"schema_file": f"{data_dir}/schema.yaml", "files": "rows.csv",
                                   "split": "temporal", "time_column": "time"}},
              "model": {"name": "dnn", "hidden_units": [16], "dropout": 0.0},
              "train": {"epochs": 2, "batch_size": 64, "seed": 3, "progress": False},
              "output_dir": str(path.parent / "runs")}
    for key, value in overrides.items():
        section, _, leaf = key.partition("__")
        if leaf:
            config[section] = {**config.get(section, {}), leaf: value}
        else:
            config[section] = value
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def project(tmp_path):
    write_dataset(tmp_path / "data")
    return tmp_path


@pytest.fixture
def trained(project, capsys):
    """A finished run at project/runs/r1."""
    code, output = genctr(capsys, "train", write_config(project / "run.yaml"))
    assert code == 0, output
    return project / "runs" / "r1"


def folder_state(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != LOCK}


# ---------------------------------------------------------------- 1. data loss, names
def test_run_name_cannot_escape_output_dir(project, capsys):
    victim = project / "victim"
    victim.mkdir()
    (victim / "thesis.txt").write_text("years of work")
    config = write_config(project / "run.yaml", name="../victim")
    one_line_error(*genctr(capsys, "train", config), "run name '../victim'")
    assert (victim / "thesis.txt").read_text() == "years of work"
    for bad in ("/abs", "a/b", ".."):
        one_line_error(*genctr(capsys, "train", write_config(project / "run.yaml", name=bad)), repr(bad))


def test_output_on_a_folder_of_user_files_is_refused(project, capsys):
    mine = project / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for flags in ([], ["--overwrite"], ["--resume"]):
        code, output = genctr(capsys, "train", write_config(project / "run.yaml"), "--output", mine, *flags)
        one_line_error(code, output, str(mine), "genctr did not create")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_pretrain_on_a_folder_of_user_files_is_refused(project, capsys):
    mine = project / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    config = {"data": yaml.safe_load(write_config(project / "run.yaml").read_text())["data"],
              "pretrain": {"epochs": 1, "batch_size": 128}}
    (project / "pre.yaml").write_text(yaml.safe_dump(config))
    one_line_error(*genctr(capsys, "pretrain", project / "pre.yaml", "--output", mine, "--overwrite"),
                   "genctr did not create")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_an_existing_run_needs_resume_or_overwrite_and_overwrite_swaps_at_the_end(trained, project, capsys):
    config = write_config(project / "run.yaml")
    one_line_error(*genctr(capsys, "train", config), "already exists", "--overwrite")
    before = folder_state(trained)
    code, output = genctr(capsys, "train", write_config(project / "run.yaml", train__seed=4), "--overwrite")
    assert code == 0, output
    assert folder_state(trained) != before
    assert yaml.safe_load((trained / "config.yaml").read_text())["train"]["seed"] == 4
    assert not [p for p in project.joinpath("runs").iterdir() if p.name.startswith(".")]


# ---------------------------------------------------- 2. a failed attempt destroys nothing
def test_a_failed_attempt_leaves_the_finished_run_intact(trained, project, capsys):
    before = folder_state(trained)
    no_data = write_config(project / "run.yaml", data_dir="missing-folder")
    code, output = genctr(capsys, "train", no_data, "--overwrite")
    one_line_error(code, output, "missing-folder")
    diverging = write_config(project / "run.yaml", train__learning_rate=1e6)
    code, output = genctr(capsys, "train", diverging, "--overwrite")
    assert code == 2 and "diverged" in output, output
    assert folder_state(trained) == before
    assert not [p for p in project.joinpath("runs").iterdir() if p.name.startswith(".")]
    assert genctr(capsys, "evaluate", trained)[0] == 0


# ------------------------------------------------------- 3. resume with a changed config
def test_resume_refuses_a_changed_config_and_keeps_the_run(trained, project, capsys):
    before = folder_state(trained)
    wider = write_config(project / "run.yaml", model={"name": "dnn", "hidden_units": [32], "dropout": 0.0})
    one_line_error(*genctr(capsys, "train", wider, "--resume"), "model.hidden_units")
    faster = write_config(project / "run.yaml", train__learning_rate=0.01)
    one_line_error(*genctr(capsys, "train", faster, "--resume"), "train.learning_rate")
    assert folder_state(trained) == before
    longer = write_config(project / "run.yaml", train__epochs=3)
    code, output = genctr(capsys, "train", longer, "--resume")
    assert code == 0, output
    assert yaml.safe_load((trained / "config.yaml").read_text())["train"]["epochs"] == 3
    assert len((trained / "history.jsonl").read_text().splitlines()) == 3


def test_a_run_saved_before_an_option_existed_resumes_while_the_option_keeps_its_default(
        trained, project, capsys):
    """Experiments reuse finished runs by resuming them; an option added to genctr later must
    not make every older run 'changed', unless the new config sets it away from its default."""
    saved = yaml.safe_load((trained / "config.yaml").read_text())
    del saved["train"]["split_on_device"], saved["train"]["embedding_l2_scope"]
    (trained / "config.yaml").write_text(yaml.safe_dump(saved))
    batch_l2 = write_config(project / "run.yaml", train__embedding_l2_scope="batch")
    one_line_error(*genctr(capsys, "train", batch_l2, "--resume"), "train.embedding_l2_scope")
    code, output = genctr(capsys, "train", write_config(project / "run.yaml"), "--resume")
    assert code == 0, output


# ------------------------------------------------------------ 4. nothing is unpickled
class PlantsAFile:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_a_checkpoint_carrying_code_is_refused_and_the_code_never_runs(trained, project, capsys):
    planted = project / "code-ran"
    saved = torch.load(trained / "checkpoint.pt", weights_only=True)
    saved["state"]["extra"] = PlantsAFile(str(planted))
    torch.save(saved, trained / "checkpoint.pt")
    code, output = genctr(capsys, "train", write_config(project / "run.yaml"), "--resume")
    one_line_error(code, output, "checkpoint.pt", "refused to load")
    torch.save({"weights": PlantsAFile(str(planted))}, trained / "model.pt")
    one_line_error(*genctr(capsys, "evaluate", trained), "model.pt", "refused to load")
    assert not planted.exists()


# ------------------------------------------------------------- 5. concurrent writers
def test_a_second_writer_of_a_run_folder_gets_one_line(trained, project, capsys):
    with exclusive_lock(trained / LOCK, "held by this test"):
        code, output = genctr(capsys, "train", write_config(project / "run.yaml"), "--resume")
    one_line_error(code, output, "in use by another genctr process")


def test_a_second_experiment_on_one_results_file_gets_one_line(project, capsys, monkeypatch):
    monkeypatch.chdir(project)
    experiment = {"name": "e", "results": "results.jsonl", "output_dir": "runs",
                  "tasks": {"t": {"source": "synthetic", "options": {"rows": 500}}},
                  "models": {"lr": {}}, "seeds": [1], "train": {"epochs": 1}}
    (project / "exp.yaml").write_text(yaml.safe_dump(experiment))
    with exclusive_lock(project / "results.jsonl.lock", "held by this test"):
        code, output = genctr(capsys, "run", "exp.yaml")
    one_line_error(code, output, "results.jsonl", "in use")
    assert not (project / "runs").exists()


# ------------------------------------------------------------------ 6. fault paths
def test_missing_or_directory_data_file(project, capsys):
    missing = write_config(project / "run.yaml", data__options={"schema_file": "data/schema.yaml",
                                                                "files": "nope.csv"})
    one_line_error(*genctr(capsys, "train", missing), "nope.csv", "no such file")
    (project / "data" / "adir.csv").mkdir()
    folder = write_config(project / "run.yaml", data__options={"schema_file": "data/schema.yaml",
                                                               "files": "adir.csv"})
    one_line_error(*genctr(capsys, "train", folder), "adir.csv", "is a directory")


def test_truncated_weights_and_checkpoint(trained, project, capsys):
    data = (trained / "model.pt").read_bytes()
    (trained / "model.pt").write_bytes(data[: len(data) // 2])
    one_line_error(*genctr(capsys, "evaluate", trained), "model.pt", "damaged or truncated")
    data = (trained / "checkpoint.pt").read_bytes()
    (trained / "checkpoint.pt").write_bytes(data[: len(data) // 3])
    one_line_error(*genctr(capsys, "train", write_config(project / "run.yaml"), "--resume"),
                   "checkpoint.pt", "damaged or truncated")


def test_a_run_folder_missing_a_part(trained, capsys):
    (trained / "encoder.json").unlink()
    one_line_error(*genctr(capsys, "evaluate", trained), "missing encoder.json")
    one_line_error(*genctr(capsys, "evaluate", trained.parent / "no-run"), "no such run folder")


def test_a_damaged_cache_entry_is_rebuilt(project):
    from genctr.config import load_run_config
    from genctr.data.store import prepare

    data = load_run_config(write_config(project / "run.yaml")).data
    first = prepare(data.make_source(), data.cache_dir)
    column = next(first.folder.glob("train/*.npy"))
    column.write_bytes(b"garbage")
    (first.folder / "valid" / "columns.json").unlink()
    second = prepare(data.make_source(), data.cache_dir)
    assert not second.from_cache and second.folder == first.folder
    third = prepare(data.make_source(), data.cache_dir)
    assert third.from_cache
    np.testing.assert_array_equal(third.splits["valid"].label, second.splits["valid"].label)


def test_a_second_encoder_of_a_cache_entry_waits_for_the_first(project):
    import threading
    import time

    from genctr.config import load_run_config
    from genctr.data.store import cache_key, prepare

    data = load_run_config(write_config(project / "run.yaml")).data
    source = data.make_source()
    entry = Path(data.cache_dir) / f"{source.name}-{cache_key(source)}"
    entry.parent.mkdir(parents=True)
    held = threading.Event()

    def first_writer():
        with exclusive_lock(entry.parent / f".{entry.name}.lock", "test"):
            held.set()
            time.sleep(1.0)

    thread = threading.Thread(target=first_writer)
    thread.start()
    held.wait()
    started = time.perf_counter()
    dataset = prepare(source, data.cache_dir)
    thread.join()
    assert time.perf_counter() - started >= 0.9 and dataset.folder == entry


def test_a_results_file_that_cannot_be_written_stops_before_training(project, capsys, monkeypatch):
    monkeypatch.chdir(project)
    (project / "results.jsonl").mkdir()  # root can write a read-only file; nobody a directory
    experiment = {"name": "e", "results": "results.jsonl", "output_dir": "runs",
                  "tasks": {"t": {"source": "synthetic", "options": {"rows": 500}}},
                  "models": {"lr": {}}, "seeds": [1], "train": {"epochs": 1}}
    (project / "exp.yaml").write_text(yaml.safe_dump(experiment))
    one_line_error(*genctr(capsys, "run", "exp.yaml"), "results.jsonl", "is a directory")
    assert not (project / "runs").exists()


def test_unknown_split_and_output_directory_and_report_outside_the_repository(trained, project, capsys,
                                                                               monkeypatch):
    one_line_error(*genctr(capsys, "evaluate", trained, "--split", "tset"), "tset", "no such split")
    (project / "out").mkdir()
    one_line_error(*genctr(capsys, "predict", trained, project / "data" / "rows.csv", project / "out"),
                   str(project / "out"), "is a directory")
    monkeypatch.chdir(project)
    one_line_error(*genctr(capsys, "report"), "benchmarks/results", "no such folder")


# ----------------------------------------------------------- 7. data is required
def test_a_config_without_data_is_an_error(project, capsys):
    config = yaml.safe_load(write_config(project / "run.yaml").read_text())
    del config["data"]
    (project / "run.yaml").write_text(yaml.safe_dump(config))
    one_line_error(*genctr(capsys, "train", project / "run.yaml"), "run.yaml", "data")
    (project / "pre.yaml").write_text(yaml.safe_dump({"pretrain": {"epochs": 1}}))
    one_line_error(*genctr(capsys, "pretrain", project / "pre.yaml"), "pre.yaml", "data")


# ------------------------------------------------------------------ 8. time columns
def test_iso_timestamps_order_the_temporal_split(project):
    from genctr.config import load_run_config

    source = load_run_config(write_config(project / "run.yaml")).data.make_source()
    raw = source.load()
    times = {name: raw.frame["time"].gather(rows).str.to_datetime(time_zone="UTC").to_numpy()
             for name, rows in raw.splits.items()}
    assert times["train"].max() <= times["valid"].min() <= times["valid"].max() <= times["test"].min()


@pytest.mark.parametrize("column", [
    pl.Series("time", [1.0, 3.0, 2.0, 5.0, 4.0, 5.5, 6.0, 7.0, 8.0, 9.0]),
    pl.Series("time", [f"2026-02-{d:02d}" for d in (1, 3, 2, 5, 4)] + [f"2026-02-{d:02d}" for d in range(6, 11)]),
    pl.Series("time", [f"2026-02-{d:02d}" for d in (1, 3, 2, 5, 4)] + [f"2026-02-{d:02d}" for d in range(6, 11)]
              ).str.to_date(),
])
def test_numeric_text_and_date_time_columns_sort_the_same_way(column):
    from genctr.data.sources.base import SplitOptions, make_splits

    frame = pl.DataFrame({"time": column})
    splits = make_splits(frame, SplitOptions(split="temporal", time_column="time", fractions=(0.6, 0.2, 0.2)))
    assert splits["train"].tolist() == [0, 2, 1, 4, 3, 5]


def test_a_time_that_is_not_a_time_names_column_and_line(project, capsys):
    rows = click_rows().with_columns(pl.when(pl.int_range(pl.len()) == 7).then(pl.lit("yesterday"))
                                     .otherwise(pl.col("time")).alias("time"))
    write_dataset(project / "data", rows)
    one_line_error(*genctr(capsys, "train", write_config(project / "run.yaml")),
                   "time column 'time'", "'yesterday'", "rows.csv line 9")


# ------------------------------------------------------------ 9. gAUC by the raw user
def test_gauc_groups_users_unseen_in_train_by_their_own_id(project):
    from genctr.config import load_run_config
    from genctr.data.store import encode_source
    from genctr.metrics import gauc

    rows = click_rows(900, users=60)
    train = rows.filter(pl.col("user").is_in([f"u{i}" for i in range(30)]))
    unseen = rows.filter(~pl.col("user").is_in([f"u{i}" for i in range(30)]))
    data = project / "data"
    train.write_csv(data / "train.csv")
    unseen.write_csv(data / "valid.csv")
    unseen.write_csv(data / "test.csv")
    config = write_config(project / "run.yaml", data__options={
        "schema_file": "data/schema.yaml", "train": "train.csv", "valid": "valid.csv", "test": "test.csv"})
    test = encode_source(load_run_config(config).data.make_source()).splits["test"]
    assert (test.tokens["user"] == 1).all()  # every test user is out of vocabulary
    score = unseen["amount"].to_numpy()
    per_user = [(g.height, auc(g["y"].to_numpy(), g["amount"].to_numpy()))
                for _, g in unseen.group_by("user") if g["y"].n_unique() == 2]
    expected = np.average([a for _, a in per_user], weights=[n for n, _ in per_user])
    assert gauc(test.label, score, test.group) == pytest.approx(expected, abs=1e-12)
    assert len(np.unique(test.group)) == unseen["user"].n_unique()


# ------------------------------------------------------ 10. divergence, one class, inf
def test_an_exploding_loss_stops_training_with_a_true_message(project, capsys):
    code, output = genctr(capsys, "train", write_config(project / "run.yaml", train__learning_rate=1e6))
    one_line_error(code, output, "training diverged", "no epoch had finished, so no checkpoint was saved")
    assert not (project / "runs" / "r1" / "model.pt").exists()


def test_single_class_labels_and_infinite_numbers_are_errors(project, capsys):
    write_dataset(project / "data", click_rows().with_columns(pl.lit(0).alias("y")))
    one_line_error(*genctr(capsys, "train", write_config(project / "run.yaml")), "every training label is [0.0]")
    rows = click_rows().with_columns(pl.col("amount").cast(pl.String))
    rows = rows.with_columns(pl.when(pl.int_range(pl.len()) == 4).then(pl.lit("inf"))
                             .otherwise(pl.col("amount")).alias("amount"))
    write_dataset(project / "data", rows)
    one_line_error(*genctr(capsys, "train", write_config(project / "run.yaml")),
                   "column 'amount'", "not finite", "'inf'", "rows.csv line 6")


def test_filled_invalid_numbers_are_counted_on_stderr(project, capsys):
    from genctr.config import load_run_config
    from genctr.data.store import encode_source

    schema = json.loads(json.dumps(SCHEMA))
    schema["fields"][2] |= {"on_invalid": "fill", "fill_value": -1.0}
    rows = click_rows().with_columns(pl.col("amount").cast(pl.String))
    rows = rows.with_columns(pl.when(pl.int_range(pl.len()) < 3).then(pl.lit("n/a"))
                             .otherwise(pl.col("amount")).alias("amount"))
    write_dataset(project / "data", rows)
    (project / "data" / "schema.yaml").write_text(yaml.safe_dump(schema))
    encode_source(load_run_config(write_config(project / "run.yaml")).data.make_source())
    assert "note: column 'amount' (numeric field 'amount'): 3 value(s)" in capsys.readouterr().err


# ------------------------------------------------------------- 11. duplicate columns
def test_duplicate_csv_column_names_are_named(project, capsys):
    text = (project / "data" / "rows.csv").read_text().splitlines()
    text[0] = text[0].replace("amount", "item")
    (project / "data" / "rows.csv").write_text("\n".join(text) + "\n")
    one_line_error(*genctr(capsys, "train", write_config(project / "run.yaml")),
                   "rows.csv", "duplicate column name(s) ['item']")


# ----------------------------------------------------------- 12. predict: unseen values
def test_predict_reports_unseen_values_warns_and_reads_tab_separated_rows(trained, project, capsys):
    rows = click_rows(50, seed=9).with_columns(pl.lit("never-seen").alias("item"))
    rows.write_csv(project / "new.tsv", separator="\t")
    code, output = genctr(capsys, "predict", trained, project / "new.tsv", project / "scored.csv",
                          "--separator", "\\t")
    assert code == 0, output
    assert "100% of field 'item' values" in output and "warning" in output
    sidecar = json.loads((project / "scored.csv.unseen.json").read_text())
    assert sidecar["unseen_share"]["item"] == 1.0 and sidecar["rows"] == 50
    assert sidecar["unseen_share"]["user"] < 0.5 and "'user'" not in output.split("unseen values per field")[0]
    assert pl.read_csv(project / "scored.csv").height == 50


# ------------------------------------------------------ 13. one precision for metrics
def test_evaluate_reproduces_metrics_json_of_a_bf16_run(project, capsys):
    from genctr.data.store import prepare
    from genctr.runs import evaluate_split, load_run

    config = write_config(project / "run.yaml", train__bf16=True)
    assert genctr(capsys, "train", config)[0] == 0
    run = load_run(project / "runs" / "r1")
    saved = json.loads((run.folder / "metrics.json").read_text())
    dataset = prepare(run.config.data.make_source(), run.config.data.cache_dir)
    again = evaluate_split(run.model, dataset.splits["test"], run.config.train.eval_batch_size)
    assert json.loads(json.dumps(again)) == saved["test"]
    code, output = genctr(capsys, "evaluate", run.folder, "--split", "test")
    assert f"{saved['test']['auc']:.5f}" in output


# ---------------------------------------------------------------- 14. relocatable runs
def test_paths_resolve_against_the_config_file_and_runs_evaluate_anywhere(project, capsys, monkeypatch,
                                                                          tmp_path_factory):
    (project / "configs").mkdir()
    config = write_config(project / "configs" / "run.yaml", data_dir="../data")
    config_data = yaml.safe_load(config.read_text())
    config_data["data"]["options"]["schema_file"] = "../data/schema.yaml"
    config.write_text(yaml.safe_dump(config_data))
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    monkeypatch.chdir(elsewhere)
    assert genctr(capsys, "train", config)[0] == 0
    run = Path(config_data["output_dir"]) / "r1"
    saved = yaml.safe_load((run / "config.yaml").read_text())["data"]
    assert saved["data_dir"] == str((project / "data").resolve())
    assert Path(saved["options"]["schema_file"]).is_absolute()
    monkeypatch.chdir(tmp_path_factory.mktemp("another"))
    assert genctr(capsys, "evaluate", run)[0] == 0
    os.rename(project / "data", project / "moved")
    one_line_error(*genctr(capsys, "evaluate", run), "data")
    code, output = genctr(capsys, "evaluate", run, "--data-dir", project / "moved")
    assert code == 0, output


# ------------------------------------------------------------- 15. rare positives
def test_few_valid_positives_switch_the_monitor_and_the_click_rate_ratio_is_printed(project, capsys):
    write_dataset(project / "data", click_rows(1500, positive_rate=0.03))
    code, output = genctr(capsys, "train", write_config(project / "run.yaml"))
    assert code == 0, output
    flat = " ".join(output.split())  # the console wraps long lines
    assert "switched to logloss" in flat and "predicted / observed click rate on test" in flat
    saved = yaml.safe_load((project / "runs" / "r1" / "config.yaml").read_text())
    assert saved["train"]["monitor"] == "logloss"
    code, output = genctr(capsys, "train", write_config(project / "run.yaml"), "--resume")
    assert code == 0, output  # the same switch is applied before the resume check


# ------------------------------------------------------------------- 16. smaller
def test_plain_latency_flags_cache_hits_and_thin_segments(trained, project, capsys):
    code, output = genctr(capsys, "evaluate", trained, "--latency")
    assert code == 0 and "latency (ms): single_p50_ms" in output
    code, output = genctr(capsys, "train", "--help")
    assert "--resume" in output and "<bool>" not in output
    code, output = genctr(capsys, "datasets", "stats", "synthetic", "--cache-dir", project / "c",
                          "-o", "rows=500")
    assert "encoded in" in output
    code, output = genctr(capsys, "datasets", "stats", "synthetic", "--cache-dir", project / "c",
                          "-o", "rows=500")
    assert "loaded from cache" in output and "encoded in" not in output
    code, output = genctr(capsys, "evaluate", trained)
    assert "positives" in output and "cold *" in output  # 60 test rows: far fewer than 100 positives


def test_field_weight_plot_styles_stay_distinct_beyond_ten_fields():
    from genctr.plots import field_styles

    styles = field_styles(24)
    assert len(set(styles)) == 24


def test_report_renders_from_records_alone(tmp_path):
    from genctr.report import write_results_markdown

    history = [{"epoch": e, "train_loss": 0.5, "valid_auc": 0.7 + e / 100, "valid_logloss": 0.5}
               for e in range(3)]
    base = {"task": "t", "inference": "plain", "test_logloss": 0.5, "segments": {}, "machine": "m",
            "commit": "c", "run_dir": str(tmp_path / "gone"), "history": history}
    records = [base | {"model": m, "pretrain": p, "seed": s, "test_auc": 0.7 + s / 1000,
                       "pretrain_epoch_seconds": 1.0, "pretrain_field_weights": {"a": 1.0, "label": 2.0}}
               for m, p in (("dnn", "none"), ("hetegen", "uniform")) for s in (1, 2)]
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    text = write_results_markdown(tmp_path).read_text()
    assert "![training curves](plots/t-curves.png)" in text
    assert "| uniform | 1.000 | 2.000 |" in text


def test_a_fine_tuned_label_is_compared_with_the_scratch_runs_of_the_same_model_options(tmp_path):
    from genctr.report import pretrain_section

    dnn = {"name": "dnn", "hidden_units": [8]}
    base = {"task": "t", "inference": "plain", "test_logloss": 0.5, "segments": {"cold": {"auc": 0.7}}}
    records = [base | {"model": label, "pretrain": pretrain, "seed": seed, "config": {"model": dnn},
                       "test_auc": auc + seed / 1000, "pretrain_epoch_seconds": 1.0}
               for label, pretrain, auc in (("dnn", "none", 0.70), ("dnn-frozen", "sb", 0.71))
               for seed in (1, 2, 3)]
    row = next(line for line in pretrain_section("t", records).splitlines()
               if line.startswith("| dnn-frozen + sb |"))
    assert row.count("+0.0100") == 2  # against `dnn` and against the same model (the DNN) from scratch
