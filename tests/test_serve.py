"""The HTTP scoring service: good requests match `genctr predict`, every bad request class is a
4xx naming the row and field, micro-batching, metrics, and the real server process."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx
import numpy as np
import polars as pl
import pytest
from fastapi.testclient import TestClient

from genctr.config import load_run_config
from genctr.data.example import write_example
from genctr.runs import load_run, predict_file, train_run
from genctr.serve.app import ServeOptions, create_app
from genctr.serve.batcher import MicroBatcher
from genctr.serve.rows import RequestRows

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A DNN trained one epoch on the example click log, and 64 raw rows of that log."""
    folder = tmp_path_factory.mktemp("serve")
    write_example(folder / "data", rows=3000, seed=1)
    config = load_run_config(ROOT / "configs" / "example-tabular.yaml")
    data = config.data.model_copy(update={"data_dir": str(folder / "data"), "cache_dir": None})
    config = config.model_copy(update={"data": data, "train": config.train.model_copy(
        update={"epochs": 1, "progress": False})})
    train_run(config, folder / "run", log=lambda line: None)
    raw = pl.read_csv(folder / "data" / "clicks.csv", infer_schema=False).head(64)
    raw.write_csv(folder / "rows.csv")
    predict_file(load_run(folder / "run"), folder / "rows.csv", folder / "scored.csv", log=lambda line: None)
    return folder, raw, pl.read_csv(folder / "scored.csv")["probability"].to_numpy()


def request_rows(raw: pl.DataFrame, run_columns: list[str], count: int) -> list[dict]:
    """Rows as a client sends them: numbers as numbers, lists as lists, text as text."""
    rows = []
    for row in raw.select(run_columns).head(count).iter_rows(named=True):
        row["price"] = float(row["price"]) if row["price"] not in (None, "") else None
        row["tags"] = row["tags"].split("|") if row["tags"] else []
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def client(served):
    folder, _, _ = served
    app = create_app(load_run(folder / "run"), ServeOptions(max_rows=100, max_body_bytes=200_000))
    with TestClient(app) as client:  # runs the lifespan: the micro-batcher starts and stops
        yield client


def test_predict_matches_genctr_predict_and_health_names_the_columns(served, client):
    _, raw, expected = served
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == "dnn" and "tags" in health["columns"]
    rows = request_rows(raw, health["columns"], 64)
    answer = client.post("/predict", json={"rows": rows})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    np.testing.assert_allclose(body["probabilities"], expected, atol=1e-6)
    assert body["inference"] == "plain" and body["cost"] == 1.0
    text = json.dumps(rows[0] | {"tags": "|".join(rows[0]["tags"]), "price": str(rows[0]["price"])})
    as_text = client.post("/predict", content='{"rows": [' + text + "]}")  # lists as one string
    assert as_text.json()["probabilities"][0] == pytest.approx(expected[0], abs=1e-6)


def test_unseen_values_are_scored_and_counted_in_metrics(served, client):
    _, raw, _ = served
    columns = client.get("/health").json()["columns"]
    row = request_rows(raw, columns, 1)[0] | {"user_id": "never-seen-user", "price": None}
    answer = client.post("/predict", json={"rows": [row], "inference": {"strategy": "plain"}})
    assert answer.status_code == 200 and 0 < answer.json()["probabilities"][0] < 1
    metrics = client.get("/metrics").text
    assert 'genctr_unseen_values_total{field="user_id"}' in metrics
    assert "genctr_request_latency_seconds_bucket" in metrics and "genctr_batch_rows_count" in metrics
    assert 'genctr_requests_total{endpoint="/predict",status="200"}' in metrics


def test_what_loads_before_serving_is_frozen_and_collector_pauses_are_metrics(served):
    import gc
    import importlib.util

    spec = importlib.util.spec_from_file_location("serve_bench", ROOT / "benchmarks" / "serve.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    folder, _, _ = served
    run = load_run(folder / "run")
    callbacks = len(gc.callbacks)
    for freeze in (True, False):
        with TestClient(create_app(run, ServeOptions(freeze_gc=freeze))) as client:
            assert (gc.get_freeze_count() > 0) is freeze  # the run's objects, exempt from scans
            before = bench.gc_pauses(client.get("/metrics").text)
            gc.collect()
            after = bench.gc_pauses(client.get("/metrics").text)
        pauses = bench.grown_between(before, after)
        assert pauses["2"]["count"] >= 1 and pauses["2"]["seconds"] > 0, pauses
        assert gc.get_freeze_count() == 0 and len(gc.callbacks) == callbacks  # undone on shutdown


def _bad_requests(good: dict) -> list[tuple[str, object, int, str]]:
    """(name, body, status, words the error must contain)."""
    return [
        ("invalid JSON", b'{"rows": [', 400, "not valid JSON"),
        ("not an object", [good], 422, "JSON object"),
        ("unknown top-level key", {"rows": [good], "model": "x"}, 422, "unknown key"),
        ("rows not a list", {"rows": good}, 422, "'rows' must be"),
        ("no rows", {"rows": []}, 422, "'rows' must be"),
        ("row not an object", {"rows": [good, 3]}, 422, "row 1 is a int"),
        ("unknown field", {"rows": [good | {"colour": "red"}]}, 422, "unknown field(s) ['colour']"),
        ("missing field", {"rows": [{k: v for k, v in good.items() if k != "device"}]}, 422,
         "missing field(s) ['device']"),
        ("text for a number", {"rows": [good | {"price": "cheap"}]}, 422, "field 'price'"),
        ("infinite number", {"rows": [good | {"price": "inf"}]}, 422, "field 'price'"),
        ("integer beyond a float", {"rows": [good | {"price": 10 ** 400}]}, 422, "field 'price'"),
        ("boolean", {"rows": [good | {"gender": True}]}, 422, "field 'gender'"),
        ("float for a category", {"rows": [good | {"age": 3.5}]}, 422, "field 'age'"),
        ("object for a category", {"rows": [good | {"region": {"a": 1}}]}, 422, "field 'region'"),
        ("list for a scalar", {"rows": [good | {"device": ["a"]}]}, 422, "field 'device'"),
        ("mixed list", {"rows": [good | {"tags": ["a", 1.5]}]}, 422, "field 'tags'"),
        ("too many rows", {"rows": [good] * 101}, 413, "at most 100"),
        ("body too large", {"rows": [good | {"user_id": "x" * 250_000}]}, 413, "bytes"),
        ("unknown strategy", {"rows": [good], "inference": {"strategy": "magic"}}, 422,
         "inference.strategy: Input should be 'plain'"),
        ("strategy not offered", {"rows": [good], "inference": {"strategy": "uttsi", "budget": 2}}, 422,
         "'uttsi@2.0' is not served; this server serves ['plain']"),
        ("budget out of range", {"rows": [good], "inference": {"strategy": "uttsi", "budget": 0.5}}, 422,
         "inference.budget"),
        ("budget a boolean", {"rows": [good], "inference": {"strategy": "uttsi", "budget": True}}, 422,
         "inference.budget"),
        ("bad inference", {"rows": [good], "inference": "uttsi"}, 422, "'inference' must be"),
    ]


def test_every_bad_request_is_a_4xx_naming_row_and_field(served, client):
    _, raw, _ = served
    good = request_rows(raw, client.get("/health").json()["columns"], 1)[0]
    for name, body, status, words in _bad_requests(good):
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        answer = client.post("/predict", content=content, headers={"content-type": "application/json"})
        assert answer.status_code == status, (name, answer.text)
        assert words in answer.json()["error"], (name, answer.json())
    nan = client.post("/predict", content=json.dumps({"rows": [good | {"price": float("nan")}]}))
    assert nan.status_code == 422 and nan.json()["row"] == 0 and nan.json()["field"] == "price"
    assert client.post("/predict", json={"rows": [good]}).status_code == 200  # still serving
    wrong_method = client.get("/predict")
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert "POST" in wrong_method.json()["error"]
    assert client.get("/nowhere").status_code == 404  # other paths: the framework's answers
    assert 'status="500"' not in client.get("/metrics").text


def test_micro_batcher_groups_concurrent_requests_by_key_and_finishes_on_close():
    calls = []

    def score(key, rows):
        calls.append((key, rows.height, rows.columns["x"]))
        return np.arange(rows.height, dtype=np.float64), np.ones(rows.height)

    async def scenario():
        batcher = MicroBatcher(score, max_rows=100, max_wait=0.2)
        batcher.start()
        frames = [RequestRows({"x": [str(i)] * (i + 1)}, i + 1) for i in range(6)]
        keys = ["plain"] * 5 + ["other"]
        results = await asyncio.gather(*(batcher.submit(k, f) for k, f in zip(keys, frames)))
        late = asyncio.ensure_future(batcher.submit("plain", frames[0]))
        await asyncio.sleep(0)
        await batcher.close()  # graceful: the late request is answered, not dropped
        return results, late.result()

    results, late = asyncio.run(scenario())
    assert calls[0][:2] == ("plain", 15) and calls[1][:2] == ("other", 6)  # 1+2+3+4+5 rows at once
    assert calls[0][2] == ["0", "1", "1", "2", "2", "2"] + ["3"] * 4 + ["4"] * 5  # in order
    assert [len(p) for p, _ in results] == [1, 2, 3, 4, 5, 6]
    assert results[1][0].tolist() == [1.0, 2.0] and results[5][0].tolist() == list(range(6))
    assert len(late[0]) == 1


def test_a_micro_batch_stops_waiting_once_every_open_connection_is_in_it():
    calls = []

    def score(key, rows):
        calls.append((key, rows.height, time.perf_counter()))
        return np.zeros(rows.height), np.ones(rows.height)

    async def scenario(open_connections):
        calls.clear()
        batcher = MicroBatcher(score, max_rows=100, max_wait=1.0, connections=lambda: open_connections)
        batcher.start()
        started = time.perf_counter()
        one = RequestRows({"x": ["a"]}, 1)
        await asyncio.gather(*(batcher.submit("plain", one) for _ in range(3)))
        await batcher.close()
        return calls[0][2] - started

    assert asyncio.run(scenario(3)) < 0.5 and calls[0][1] == 3  # all three clients: no wait
    assert asyncio.run(scenario(4)) >= 0.99 and calls[0][1] == 3  # a 4th client might send


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_the_real_server_scores_rows_and_shuts_down_gracefully(served, backend):
    folder, raw, expected = served
    port = _free_port()
    extra = ["--backend", "onnx", "--inference", "uttsi@2.0"] if backend == "onnx" else []
    server = subprocess.Popen([sys.executable, "-m", "genctr", "serve", str(folder / "run"),
                               "--port", str(port), "--threads", "1", "--max-wait-ms", "0", *extra],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=os.environ | {"PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                columns = httpx.get(f"{base}/health", timeout=1).json()["columns"]
                break
            except httpx.HTTPError:
                if server.poll() is not None or time.time() > deadline:
                    raise AssertionError(f"the server did not start: {server.communicate()}")
                time.sleep(0.2)
        rows = request_rows(raw, columns, 64)
        with httpx.Client(base_url=base, timeout=10) as http:
            answers = [http.post("/predict", json={"rows": rows[i:i + 8]}) for i in range(0, 64, 8)]
            bad = http.post("/predict", content=b"{")
            uttsi = http.post("/predict", json={"rows": rows, "inference": {"strategy": "uttsi", "budget": 2.0}})
        assert all(a.status_code == 200 for a in answers) and bad.status_code == 400
        scored = np.concatenate([a.json()["probabilities"] for a in answers])
        np.testing.assert_allclose(scored, expected, atol=1e-6 if backend == "torch" else 1e-5)
        if backend == "onnx":  # UTTSI's passes through the drop-input export, made at start
            assert uttsi.status_code == 200 and len(uttsi.json()["probabilities"]) == 64
            assert (folder / "run" / "model.drop.onnx").is_file()
        else:
            assert uttsi.status_code == 422  # not offered by this server
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=30)
    assert code == 0, server.stderr.read()


def _wait_for_workers(base: str, server: subprocess.Popen, workers: int) -> dict:
    """/health over new connections until each worker has answered; the last answer."""
    pids, deadline = set(), time.time() + 90
    while len(pids) < workers:
        try:
            health = httpx.get(f"{base}/health", timeout=1).json()
            pids.add(health["pid"])
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.time() > deadline:
            raise AssertionError(f"{len(pids)} of {workers} workers answered: {server.communicate()}")
        time.sleep(0.05)
    return health


def test_workers_share_one_port_and_their_metrics_and_stop_gracefully(served, tmp_path):
    folder, raw, expected = served
    port = _free_port()
    scratch = tmp_path / "tmp"  # where the metrics folder goes (and must be gone after)
    scratch.mkdir()
    command = [sys.executable, "-m", "genctr", "serve", str(folder / "run"), "--port", str(port),
               "--threads", "1", "--workers", "2"]
    env = os.environ | {"PYTHONUNBUFFERED": "1", "TMPDIR": str(scratch)}
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        columns = _wait_for_workers(base, server, 2)["columns"]
        assert len(list(scratch.iterdir())) == 1  # the workers' metrics folder
        rows = request_rows(raw, columns, 64)
        answers = [httpx.post(f"{base}/predict", json={"rows": rows[i:i + 8]}, timeout=10)
                   for i in range(0, 64, 8)]  # a connection each: both workers answer some
        scored = np.concatenate([a.json()["probabilities"] for a in answers])
        np.testing.assert_allclose(scored, expected, atol=1e-6)
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
        assert 'genctr_requests_total{endpoint="/predict",status="200"} 8.0' in metrics  # summed
        assert "genctr_rows_scored_total 64.0" in metrics
        second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
        assert second.returncode != 0 and f"cannot listen on 127.0.0.1:{port}" in second.stdout + second.stderr
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)
    assert code == 0, server.stderr.read()
    assert list(scratch.iterdir()) == []  # the metrics folder removed, nothing else touched


def test_a_worker_that_cannot_start_stops_the_service_with_its_error(tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    failed = subprocess.run([sys.executable, "-m", "genctr", "serve", str(tmp_path / "no-such-run"),
                             "--port", "0", "--workers", "2"], capture_output=True, text=True,
                            timeout=120, env=os.environ | {"TMPDIR": str(scratch)})
    said = failed.stdout + failed.stderr
    assert failed.returncode == 1 and "no-such-run" in said and "a worker failed" in said
    assert list(scratch.iterdir()) == []


def test_strategies_fitted_at_start_are_served_per_request(served):
    from genctr.errors import ConfigError
    from genctr.serve.strategies import fit_strategies, parse_spec

    folder, raw, expected = served
    run = load_run(folder / "run")
    lines = []
    strategies = fit_strategies(run, ["temperature", "uttsi@2.0", "matt@4"], log=lines.append)
    assert sorted(strategies) == ["matt@4", "plain", "temperature", "uttsi@2.0"] and len(lines) == 3
    with TestClient(create_app(run, strategies=strategies)) as client:
        rows = request_rows(raw, client.get("/health").json()["columns"], 64)
        answers = {name: client.post("/predict", json={"rows": rows, "inference": inference}).json()
                   for name, inference in [("plain", None), ("temperature", {"strategy": "temperature"}),
                                           ("uttsi", {"strategy": "uttsi", "budget": 2.0}),
                                           ("matt", {"strategy": "matt", "paths": 4})]}
    np.testing.assert_allclose(answers["plain"]["probabilities"], expected, atol=1e-6)
    order = np.argsort(expected)  # a temperature keeps the ranking
    assert np.all(np.diff(np.asarray(answers["temperature"]["probabilities"])[order]) >= -1e-9)
    assert answers["uttsi"]["inference"] == "uttsi@2.0" and 1 <= answers["uttsi"]["cost"] <= 8
    assert answers["matt"]["cost"] == 4.0 and len(answers["matt"]["probabilities"]) == 64
    for bad in ("plain@2", "uttsi@x", "magic"):
        with pytest.raises(ConfigError, match="--inference"):
            parse_spec(bad)


def test_the_onnx_backend_runs_uttsi_through_onnxruntime_like_torch(served):
    from genctr.serve.export import OnnxScorer, onnx_for_serving
    from genctr.serve.strategies import fit_strategies

    folder, raw, _ = served
    run = load_run(folder / "run")
    onnx = OnnxScorer(onnx_for_serving(run, lambda line: None, drop_input=True))
    calls = []

    def forward(batch, drop, rows):
        calls.append(len(batch))
        return onnx.logits(batch, drop, rows)

    answers = {}
    for backend, passes in (("torch", None), ("onnx", forward)):
        strategies = fit_strategies(run, ["uttsi@2.0", "mcdropout@3"], log=lambda line: None,
                                    forward=passes)
        with TestClient(create_app(run, strategies=strategies)) as client:
            rows = request_rows(raw, client.get("/health").json()["columns"], 64)
            answers[backend] = {name: client.post("/predict", json={"rows": rows, "inference": spec}).json()
                                for name, spec in (("uttsi", {"strategy": "uttsi", "budget": 2.0}),
                                                   ("mcdropout", {"strategy": "mcdropout", "paths": 3}))}
        if passes is not None:
            assert calls and strategies["mcdropout@3"].forward is None  # dropout on: torch only
    np.testing.assert_allclose(answers["onnx"]["uttsi"]["probabilities"],
                               answers["torch"]["uttsi"]["probabilities"], atol=1e-4)
    assert answers["onnx"]["uttsi"]["cost"] == answers["torch"]["uttsi"]["cost"]
    np.testing.assert_allclose(answers["onnx"]["mcdropout"]["probabilities"],
                               answers["torch"]["mcdropout"]["probabilities"], atol=1e-6)


def test_the_onnx_backend_scores_like_torch(served):
    import onnx

    from genctr.serve.export import EXPORT_VERSION, OnnxScorer, onnx_for_serving

    folder, raw, expected = served
    run = load_run(folder / "run")
    path = onnx_for_serving(run, log=lambda line: None)
    stamp = path.stat().st_mtime
    assert onnx_for_serving(run, log=lambda line: None).stat().st_mtime == stamp  # not re-exported
    drop_path = onnx_for_serving(run, log=lambda line: None, drop_input=True)
    drop_path.replace(path)  # a newer file with other inputs (as another version's export)
    logged = []
    assert onnx_for_serving(run, log=logged.append) == path and logged  # exported again
    graph = onnx.load(str(path), load_external_data=False)
    assert {p.key: p.value for p in graph.metadata_props}["genctr_export_version"] == EXPORT_VERSION
    del graph.metadata_props[:]  # as an export before the weights' subnormals were zeroed
    onnx.save(graph, str(path))
    logged = []
    assert onnx_for_serving(run, log=logged.append) == path and logged  # exported again
    assert OnnxScorer(path).fields is None  # without the drop input, as this export has it
    with TestClient(create_app(run, plain_scorer=OnnxScorer(path))) as client:
        rows = request_rows(raw, client.get("/health").json()["columns"], 64)
        answer = client.post("/predict", json={"rows": rows})
    np.testing.assert_allclose(answer.json()["probabilities"], expected, atol=1e-5)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_a_run_loaded_on_cuda_serves_and_predicts_like_the_cpu(served, tmp_path):
    from genctr.serve.strategies import fit_strategies

    folder, raw, expected = served
    run = load_run(folder / "run", device="cuda")
    assert next(run.model.parameters()).is_cuda
    strategies = fit_strategies(run, ["uttsi@2.0", "matt@4"], log=lambda line: None)
    with TestClient(create_app(run, strategies=strategies)) as client:
        rows = request_rows(raw, client.get("/health").json()["columns"], 64)
        answers = {name: client.post("/predict", json={"rows": rows, "inference": spec}).json()
                   for name, spec in (("plain", None), ("uttsi", {"strategy": "uttsi", "budget": 2.0}),
                                      ("matt", {"strategy": "matt", "paths": 4}))}
    np.testing.assert_allclose(answers["plain"]["probabilities"], expected, atol=1e-5)
    assert 1 <= answers["uttsi"]["cost"] <= 8 and answers["matt"]["cost"] == 4.0
    assert all(0 < p < 1 for p in answers["uttsi"]["probabilities"] + answers["matt"]["probabilities"])
    predict_file(run, folder / "rows.csv", tmp_path / "scored.csv", log=lambda line: None)  # genctr predict
    np.testing.assert_allclose(pl.read_csv(tmp_path / "scored.csv")["probability"].to_numpy(), expected, atol=1e-5)

