"""benchmarks/scale.py at a tiny size, in process: its Criteo-shaped data streams through the
encoder and trains with sparse embeddings; `genctr report` renders its records and the serve
benchmark's."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def scale(monkeypatch):
    spec = importlib.util.spec_from_file_location("scale", ROOT / "benchmarks" / "scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "CHUNK", 1000)  # several chunks per split
    monkeypatch.setitem(module.GENCTR_TRAIN, "shuffle_block_rows", 1000)  # several blocks
    return module


def test_scale_data_streams_encodes_and_trains(scale, tmp_path, capsys):
    folder = scale.generate(4000, tmp_path / "data")
    chunk = scale._chunk(2000, seed=7)
    assert chunk.columns == ["label", *scale.NUMERIC, *scale.CATEGORICAL]
    assert 0.1 < chunk["label"].mean() < 0.5 and chunk["I1"].null_count() > 0
    assert chunk["C3"].n_unique() > 1000  # a 10M-value field: mostly rare values
    dataset = scale.data_config(folder, "parquet", tmp_path / "cache").prepare()
    assert {name: len(split) for name, split in dataset.splits.items()} == \
        {"train": 3200, "valid": 400, "test": 400}
    scale.train_worker(folder, "parquet", tmp_path / "cache", "dnn", tmp_path / "run")
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["train_rows_per_s"] > 0 and 0.5 < result["test_auc"] < 1


def test_report_renders_serve_and_scale_records(tmp_path):
    from genctr.files import append_jsonl
    from genctr.report import write_results_markdown

    results = tmp_path / "results"
    common = {"commit": "abc", "machine": "test machine"}
    for rows, speed in ((1_000_000, 30_000.0), (5_000_000, 28_000.0)):
        for tool in ("genctr", "fuxictr"):
            append_jsonl(results / "scale.jsonl", {
                "task": "scale", "tool": tool, "format": "csv", "rows": rows, "fields": 39,
                "model": "dnn", "encode_seconds": rows / 1e5 * (3 if tool == "fuxictr" else 1),
                "encode_rows_per_s": 1e5, "encode_peak_rss_mb": 900.0, "encode_peak_anon_mb": 800.0,
                "disk_mb": 150.0, "largest_vocab": 123_456, "train_rows_per_s": speed,
                "train_peak_rss_mb": 2000.0, "train_peak_anon_mb": 1500.0, "test_auc": 0.74,
                "command": "benchmarks/scale.py", **common})
    append_jsonl(results / "scale.jsonl", {  # a later size on newer code: no ratio to older runs
        "task": "scale", "tool": "genctr", "format": "csv", "rows": 20_000_000, "fields": 39,
        "model": "dnn", "encode_seconds": 100.0, "encode_rows_per_s": 2e5,
        "encode_peak_rss_mb": 900.0, "encode_peak_anon_mb": 800.0, "disk_mb": 150.0,
        "largest_vocab": 123_456, "train_rows_per_s": 15_000.0, "train_peak_rss_mb": 2000.0,
        "train_peak_anon_mb": 1500.0, "test_auc": 0.75, "command": "benchmarks/scale.py",
        "commit": "def", "machine": "test machine"})
    append_jsonl(results / "serve.jsonl", {
        "task": "serve", "tool": "genctr", "model": "dcnv2", "backend": "torch",
        "inference": "plain", "rows_per_request": 1, "clients": 8, "requests_per_s": 900.0,
        "latency_ms_p50": 8.0, "latency_ms_p99": 20.0, "errors": 0, "rows_per_s": 900.0,
        "duration_s": 60.0, "rss_start_mb": 500.0, "rss_end_mb": 510.0, **common})
    append_jsonl(results / "serve.jsonl", {  # the same cell with the collector frozen: its own row
        "task": "serve", "tool": "genctr", "model": "dcnv2", "backend": "torch",
        "inference": "plain", "rows_per_request": 1, "clients": 8, "requests_per_s": 950.0,
        "latency_ms_p50": 7.0, "latency_ms_p99": 10.0, "errors": 0, "rows_per_s": 950.0,
        "duration_s": 60.0, "rss_start_mb": 500.0, "rss_end_mb": 510.0, "max_wait_ms": 2.0,
        "threads": 1, "freeze_gc": True, "gc_pauses": {"0": {"count": 900, "seconds": 0.1},
                                                        "2": {"count": 40, "seconds": 0.012}}, **common})
    frozen = {"task": "serve", "tool": "genctr", "model": "dcnv2", "backend": "onnx",
              "inference": "plain", "rows_per_request": 1, "clients": 8, "errors": 0,
              "duration_s": 60.0, "rss_start_mb": 500.0, "rss_end_mb": 510.0, "max_wait_ms": 2.0,
              "threads": 1, "freeze_gc": True, "run": "r", **common}
    for repeat, (speed, p99) in enumerate([(1000.0, 9.0), (1200.0, 7.0), (900.0, 12.0)], start=1):
        append_jsonl(results / "serve.jsonl", frozen | {  # a repeated cell: one row, the median
            "requests_per_s": speed, "rows_per_s": speed, "latency_ms_p50": 5.0,
            "latency_ms_p99": p99, "repeat": repeat})
    append_jsonl(results / "serve.jsonl", frozen | {"requests_per_s": 4000.0, "rows_per_s": 4000.0,
                                                    "latency_ms_p50": 5.0, "latency_ms_p99": 4.0,
                                                    "workers": 2, "batch_rows_mean": 8.0, "batch_ms_mean": 0.5})
    text = write_results_markdown(tmp_path).read_text()
    assert "| genctr | csv | 5,000,000 | dnn | 50.0 |" in text and "`abc` |" in text
    assert "| 0.93 |" in text  # 28k over 30k rows/s at the smallest size
    assert "3.0x" in text  # FuxiCTR's encode seconds over genctr's
    # its own commit's smallest size is itself, and FuxiCTR ran at another commit: no ratios
    assert "| 15,000 | 1.00 | 2,000 (1,500) | 0.7500 |  | `def` |" in text
    assert (tmp_path / "plots" / "scale.png").is_file()
    # a record from before the settings were recorded: the server's defaults then
    assert "| dcnv2 | torch | plain | 2 | default | 1 |  | 1 | 8 | 900 | 900 | 8.00 | 20.00 |  |  | 0 | 500 → 510 |" in text
    assert "| dcnv2 | torch | plain | 2 | 1 | 1 | yes | 1 | 8 | 950 | 950 | 7.00 | 10.00 |  | 40 (12) | 0 |" in text
    assert "| dcnv2 | onnx | plain | 2 | 1 | 1 | yes | 1 | 8 | 1,000 (900-1,200) | 1,000 | 5.00 | 9.00 (7.00-12.00) |  |  | 0 | 500 → 510 | 3 |" in text
    # the same cell served by 2 workers: a row of its own (workers, between threads and GC frozen)
    assert "| dcnv2 | onnx | plain | 2 | 1 | 2 | yes | 1 | 8 | 4,000 | 4,000 | 5.00 | 4.00 | 8, 0.50 |  | 0 |" in text
