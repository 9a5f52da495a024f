"""Load benchmark of `genctr serve` with wrk (an established HTTP load generator, C, low overhead
on a 2-core machine; `apt-get install wrk`), on localhost only, bounded in time.

    .venv/bin/python benchmarks/serve.py --run RUN_DIR --data-dir ../shared/data [--seconds 60]
        [--max-wait-ms 2] [--threads N] [--no-freeze-gc] [--repeat N] [--cells torch:plain:1:8 ...]
        [--results FILE]

For each backend (torch; onnx: onnxruntime runs every forward, UTTSI's through the export with
the drop input), inference (plain; uttsi@2.0), request size (1 and 64 rows) and client count (1,
8, 32): wrk sends POST /predict with bodies cut from the test split's raw rows (varied per
request) for `--seconds`; one record per cell in benchmarks/results/serve.jsonl with requests/s,
p50/p99 latency, errors (non-2xx and socket errors), the server's RSS before and after and its
settings (micro-batch wait, forward threads, whether the garbage collector was frozen at start)
and the collector's pauses during the cell, from the server's /metrics (count and seconds per
generation). `--repeat N` measures each cell N times, in rounds (every cell once per round, so
that the cells compared see the same drift of a shared machine), a record each (`repeat`: 1..N).
Cells already recorded (N times) for this run, commit and settings are skipped (resumable).
The server runs as its own process (`genctr serve`), started once per backend.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx2 as httpx
import numpy as np
import polars as pl
from prometheus_client.parser import text_string_to_metric_families

from genctr.config import DataConfig
from genctr.files import append_jsonl, read_jsonl
from genctr.provenance import git_commit, machine, now_iso
from genctr.runs import load_run, moved_data
from genctr.schema import FieldKind, Schema

CELLS = [(backend, inference, rows, clients)
         for backend in ("torch", "onnx") for inference in ("plain", "uttsi@2.0")
         for rows in (1, 64) for clients in (1, 8, 32)]


def picked_test_rows(test_rows: int, count: int, seed: int = 0) -> np.ndarray:
    """Sorted positions in the test split of the rows the requests are cut from."""
    return np.sort(np.random.default_rng(seed).choice(test_rows, min(count, test_rows), replace=False))


def request_rows(data: DataConfig, schema: Schema, count: int, seed: int = 0) -> list[dict]:
    """`count` raw test rows as a client sends them (lists as lists, numbers as numbers)."""
    raw = data.make_source().load()
    test = raw.splits["test"]
    frame = raw.frame
    rows = []
    for index in test[picked_test_rows(len(test), count, seed)]:
        row = {}
        for spec in schema.fields:
            column = spec.source_column
            if spec.name in raw.sequence_refs:  # a history built from earlier rows
                owner = schema.field(spec.share_vocab).source_column
                refs = raw.sequence_refs[spec.name][index]
                row[column] = [str(frame[owner][int(r)]) for r in refs if r >= 0]
                continue
            value = frame[column][int(index)]
            if value is None:
                row[column] = [] if spec.is_list else None
            elif spec.kind is FieldKind.numeric:
                row[column] = float(value)
            elif spec.is_list and isinstance(value, pl.Series):  # a list column
                row[column] = [str(v) for v in value.to_list() if v is not None]
            elif spec.is_list:
                row[column] = [v for v in str(value).split(spec.separator) if v]
            else:
                row[column] = str(value)
        rows.append(row)
    return rows


def lua_script(bodies: list[str], path: Path) -> Path:
    """A wrk script that cycles through the request bodies."""
    quoted = ",\n".join("[==[" + body + "]==]" for body in bodies)
    path.write_text(f"""
local bodies = {{{quoted}}}
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = (i % #bodies) + 1
  return wrk.format(nil, "/predict", nil, bodies[i])
end
""")
    return path


def parse_wrk(text: str) -> dict[str, float]:
    def ms(value: str, unit: str) -> float:
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]

    latency = {p: ms(v, u) for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)}
    rate = re.search(r"Requests/sec:\s+([\d.]+)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if rate is None or "50" not in latency or "99" not in latency:
        raise RuntimeError(f"could not read wrk's output:\n{text}")
    errors = int(non2xx.group(1)) if non2xx else 0
    errors += sum(int(g) for g in sockets.groups()) if sockets else 0
    return {"requests_per_s": float(rate.group(1)), "latency_ms_p50": latency["50"],
            "latency_ms_p99": latency["99"], "errors": errors}


def gc_pauses(metrics_text: str) -> dict[str, dict[str, float]]:
    """generation -> {count, seconds} of the collector's pauses so far, from GET /metrics."""
    return _labelled_sums(metrics_text, "genctr_gc_pause_seconds", "generation")


def batch_totals(metrics_text: str) -> dict[str, dict[str, float]]:
    """inference -> {count, seconds} of the micro-batches scored so far, and "rows" -> {count,
    seconds: rows}, from GET /metrics: how big the batches were and how long each one took
    (the latency's share that is compute, not HTTP or waiting)."""
    totals = _labelled_sums(metrics_text, "genctr_batch_seconds", "inference")
    rows = _labelled_sums(metrics_text, "genctr_batch_rows", None)
    return totals | {"rows": rows.get("", {"count": 0.0, "seconds": 0.0})}


def _labelled_sums(metrics_text: str, name: str, label: str | None) -> dict[str, dict[str, float]]:
    """label value -> {count, seconds} (the histogram's _count and _sum) of histogram `name`."""
    sums: dict[str, dict[str, float]] = {}
    kind = {f"{name}_count": "count", f"{name}_sum": "seconds"}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name in kind:
                key = sample.labels[label] if label else ""
                sums.setdefault(key, {"count": 0.0, "seconds": 0.0})[kind[sample.name]] = sample.value
    return sums


def grown_between(before: dict, after: dict) -> dict[str, dict[str, float]]:
    """label -> {count, seconds}: how much each of _labelled_sums' totals grew between readings."""
    return {g: {k: after[g][k] - before.get(g, {}).get(k, 0.0) for k in ("count", "seconds")}
            for g in sorted(after)}


def batches_between(before: dict, after: dict, inference: str) -> dict[str, float]:
    """Mean rows and mean milliseconds of the micro-batches scored between two readings."""
    grown = grown_between(before, after)
    batches = grown.get(inference, {}).get("count", 0.0)
    return {"batch_rows_mean": grown["rows"]["seconds"] / batches if batches else float("nan"),
            "batch_ms_mean": 1000 * grown[inference]["seconds"] / batches if batches else float("nan")}


def rss_mb(pid: int) -> float:
    """Resident memory of the process and its children (the workers of `serve --workers`)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024 + sum(rss_mb(int(child)) for child in children)
    return float("nan")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(run_dir: Path, data_dir: Path, backend: str, port: int, max_wait_ms: float,
                 threads: int | None, freeze_gc: bool = True, workers: int = 1) -> subprocess.Popen:
    """The server, once each of its workers has answered /health."""
    command = [sys.executable, "-m", "genctr", "serve", str(run_dir), "--port", str(port),
               "--workers", str(workers),
               "--backend", backend, "--data-dir", str(data_dir), "--max-wait-ms", str(max_wait_ms),
               "--freeze-gc" if freeze_gc else "--no-freeze-gc", "--inference", "uttsi@2.0"]
    if threads is not None:
        command += ["--threads", str(threads)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600  # fitting UTTSI loads the data and scores valid
    answered = set()
    while time.time() < deadline:
        try:
            health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)  # a new connection
            answered.add(health.json()["pid"])
            if len(answered) == workers:
                return server
            time.sleep(0.05)
            continue
        except httpx.HTTPError:
            if server.poll() is not None:
                raise RuntimeError(f"the server stopped: {server.stderr.read()}")
        time.sleep(0.5)
    server.terminate()
    raise RuntimeError("the server did not answer /health within 600 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a saved run (DCNv2 on ml1m-ctr)")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/serve.jsonl"))
    parser.add_argument("--max-wait-ms", type=float, default=2.0,
                        help="the server's micro-batch wait (0: score what is queued at once)")
    parser.add_argument("--threads", type=int, default=None, help="the server's forward threads")
    parser.add_argument("--workers", type=int, default=1, help="the server's processes (serve --workers)")
    parser.add_argument("--no-freeze-gc", dest="freeze_gc", action="store_false",
                        help="serve without exempting the loaded run from the garbage collector")
    parser.add_argument("--repeat", type=int, default=1,
                        help="measure each cell this many times in a row (each a record: this VM's "
                        "throughput varies from run to run, so one measurement near a goal decides little)")
    parser.add_argument("--cells", nargs="*", default=None, metavar="BACKEND:INFERENCE:ROWS:CLIENTS",
                        help="only these cells, e.g. torch:plain:1:8 (default: all)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk (Debian's package)", file=sys.stderr)
        return 2
    commit = git_commit()
    settings = {"max_wait_ms": args.max_wait_ms, "threads": args.threads, "freeze_gc": args.freeze_gc,
                "workers": args.workers}
    done = Counter((r["backend"], r["inference"], r["rows_per_request"], r["clients"])
                   for r in read_jsonl(args.results) if r.get("run") == str(args.run.resolve())
                   and r.get("commit") == commit and r.get("max_wait_ms", 2.0) == args.max_wait_ms
                   and r.get("threads") == args.threads and r.get("freeze_gc", False) == args.freeze_gc
                   and r.get("workers", 1) == args.workers)
    wanted = CELLS if args.cells is None else [
        (b, i, int(r), int(c)) for b, i, r, c in (cell.split(":") for cell in args.cells)]
    todo = [c for c in wanted if done[c] < args.repeat]
    if not todo:
        print("every cell is recorded for this run and commit")
        return 0
    run = load_run(args.run)
    rows = request_rows(moved_data(run.config.data, args.data_dir.resolve()), run.encoder.schema, 64 * 16)
    folder = Path(tempfile.mkdtemp(prefix="genctr-serve-bench-"))
    for backend in dict.fromkeys(c[0] for c in todo):
        port = free_port()
        server = start_server(args.run, args.data_dir, backend, port, args.max_wait_ms, args.threads,
                              args.freeze_gc, args.workers)
        metrics_url = f"http://127.0.0.1:{port}/metrics"
        try:
            # round by round (each cell once per round): cells compared with each other see
            # the same drift of a shared machine, instead of one's repeats all before the other's
            rounds = [c for turn in range(args.repeat) for c in todo
                      if c[0] == backend and done[c] + turn < args.repeat]
            for cell in rounds:
                _, inference, size, clients = cell
                done[cell] += 1
                strategy = ({} if inference == "plain" else
                            {"inference": {"strategy": "uttsi", "budget": float(inference.split("@")[1])}})
                bodies = [json.dumps({"rows": rows[i:i + size]} | strategy)
                          for i in range(0, min(len(rows), 256 * size), size)]
                script = lua_script(bodies, folder / f"{size}.lua")
                rss_start = rss_mb(server.pid)
                metrics_start = httpx.get(metrics_url, timeout=10).text
                started = time.perf_counter()
                wrk = subprocess.run(["wrk", "-t", "1", "-c", str(clients), "-d", f"{args.seconds}s",
                                      "--latency", "--timeout", "10s", "-s", str(script),
                                      f"http://127.0.0.1:{port}"], capture_output=True, text=True)
                measured = parse_wrk(wrk.stdout)
                metrics_end = httpx.get(metrics_url, timeout=10).text
                pauses = grown_between(gc_pauses(metrics_start), gc_pauses(metrics_end))
                batches = batches_between(batch_totals(metrics_start), batch_totals(metrics_end),
                                          inference)
                record = {"task": "serve", "tool": "genctr", "model": run.config.model_name,
                          "backend": backend, "inference": inference, "rows_per_request": size,
                          "clients": clients, **settings, **measured, "repeat": done[cell],
                          "rows_per_s": measured["requests_per_s"] * size,
                          "duration_s": time.perf_counter() - started, "rss_start_mb": rss_start,
                          "rss_end_mb": rss_mb(server.pid), "gc_pauses": pauses, **batches,
                          "run": str(args.run.resolve()),
                          "commit": commit, "machine": machine(), "finished_at": now_iso()}
                append_jsonl(args.results, record)
                print(f"{backend} {inference} {size} row(s) x {clients} clients: "
                      f"{measured['requests_per_s']:,.0f} req/s, p50 {measured['latency_ms_p50']:.2f} ms, "
                      f"p99 {measured['latency_ms_p99']:.2f} ms, errors {measured['errors']}, "
                      f"batches of {batches['batch_rows_mean']:.1f} rows in {batches['batch_ms_mean']:.2f} ms, "
                      f"rss {record['rss_start_mb']:.0f} -> {record['rss_end_mb']:.0f} MB, gc pauses "
                      + ", ".join(f"gen{g} {p['count']:.0f} ({1000 * p['seconds']:.0f} ms)"
                                  for g, p in pauses.items()), flush=True)
        finally:
            server.terminate()
            server.wait(timeout=60)
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
