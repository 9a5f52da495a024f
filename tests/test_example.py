"""The README's "bring your own data" path, exactly as a newcomer types it (issue 13, item 17)."""

import shutil
from pathlib import Path

import polars as pl
import yaml

from helpers import genctr

ROOT = Path(__file__).resolve().parents[1]


def test_the_example_click_log_trains_evaluates_and_predicts(tmp_path, capsys, monkeypatch):
    (tmp_path / "configs").mkdir()
    for name in ("example-tabular.yaml", "example-schema.yaml"):
        shutil.copy(ROOT / "configs" / name, tmp_path / "configs" / name)
    monkeypatch.chdir(tmp_path)
    code, output = genctr(capsys, "datasets", "example", "data/example", "--rows", "4000")
    assert code == 0, output
    rows = pl.read_csv("data/example/clicks.csv")
    assert rows.height == 4000 and rows["timestamp"][0].endswith("Z")
    again = genctr(capsys, "datasets", "example", "data/example")
    assert again[0] == 2 and "already exists" in again[1]
    code, output = genctr(capsys, "train", "configs/example-tabular.yaml")
    assert code == 0, output
    metrics = yaml.safe_load(Path("runs/example-dnn/metrics.json").read_text())
    assert metrics["test"]["auc"] > 0.55 and metrics["test"]["rows"] == 400
    code, output = genctr(capsys, "evaluate", "runs/example-dnn", "--split", "test")
    assert code == 0 and f"{metrics['test']['auc']:.5f}" in output
    code, output = genctr(capsys, "predict", "runs/example-dnn", "data/example/clicks.csv", "scored.csv")
    assert code == 0 and pl.read_csv("scored.csv").height == 4000


def test_files_takes_one_path_or_a_list():
    from genctr.data.sources.tabular import TabularOptions

    one = TabularOptions(schema_file="s.yaml", files="a.csv")
    assert one.files == ["a.csv"] == TabularOptions(schema_file="s.yaml", files=["a.csv"]).files
