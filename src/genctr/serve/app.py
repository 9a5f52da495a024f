"""The HTTP scoring service (`genctr serve RUN`): a saved run behind uvicorn; /predict is a plain
ASGI handler in front of FastAPI, which answers the rest.

POST /predict {"rows": [{column: raw value, ...}, ...], "inference": {"strategy": "uttsi", "budget": 2}}
  -> {"probabilities": [...], "cost": mean forward passes per row, "inference": "uttsi@2.0"}
  (the strategies a server offers are fitted once at start: serve/strategies.py)
GET /health -> the run, its model and the columns a row must carry
GET /metrics -> Prometheus text (requests, errors, latency, batch sizes, unseen values per field)

The run (model, encoder) loads once at start. Every bad request is answered 4xx with a JSON
body naming the row and field (`RequestError`), never 500: the body is read with a size limit
and parsed here, not by the framework. Concurrent requests are scored together
(`MicroBatcher`); on shutdown, requests already accepted are finished first.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import sys
import time
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Hashable

import numpy as np
import uvicorn
from fastapi import FastAPI
from fastapi.responses import Response

from genctr.data.encode_fast import encode_rows
from genctr.data.encoded import EncodedSplit
from genctr.errors import GenctrError
from genctr.runs import Run
from genctr.schema import OOV, FieldKind
from genctr.serve.batcher import MicroBatcher
from genctr.serve.metrics import ServeMetrics
from genctr.serve.rows import RequestError, RequestRows, RowReader
from genctr.serve.strategies import requested
from genctr.testtime.evaluate import make_inference, predict_with
from genctr.testtime.inference import Inference, InferenceOptions


@dataclass
class ServeOptions:
    max_rows: int = 4096  # rows in one request
    max_batch_rows: int = 4096  # rows in one forward pass
    max_wait_ms: float = 2.0  # how long the first request of a batch waits for company
    max_body_bytes: int = 8 * 1024 * 1024
    freeze_gc: bool = True  # what loaded before serving is never scanned by the cyclic collector


def create_app(run: Run, options: ServeOptions | None = None,
               strategies: dict[str, Inference] | None = None,
               plain_scorer: Callable[[EncodedSplit], np.ndarray] | None = None) -> "PredictFirst":
    """`strategies`: name -> fitted strategy (serve.strategies.fit_strategies); plain only by
    default. `plain_scorer` scores plain requests instead of the torch model (the ONNX backend,
    serve.export.OnnxScorer); the other strategies run what they were fitted with
    (serve.strategies.fit_strategies: the torch model, or on the ONNX backend its drop-input
    export)."""
    options = options or ServeOptions()
    strategies = strategies or {"plain": make_inference(InferenceOptions())}
    reader = RowReader(run.encoder, options.max_rows)
    metrics = ServeMetrics()
    categorical = [s.name for s in run.encoder.schema.fields if s.kind is not FieldKind.numeric]

    def score(key: Hashable, rows: RequestRows) -> tuple[np.ndarray, np.ndarray]:
        start = time.perf_counter()
        split = encode_rows(run.encoder, rows.columns)
        for name in categorical:
            unseen = np.count_nonzero(np.asarray(split.tokens[name]) == OOV)  # OOV is not PAD
            if unseen:
                metrics.unseen.labels(name).inc(unseen)
        if key == "plain" and plain_scorer is not None:
            probability = plain_scorer(split)
            cost = np.ones(len(probability))
        else:
            probability, cost = predict_with(strategies[key], run.model, split)
        metrics.rows.inc(len(probability))
        metrics.batch_seconds.labels(key).observe(time.perf_counter() - start)
        return probability, cost

    batcher = MicroBatcher(score, options.max_batch_rows, options.max_wait_ms / 1000,
                           on_batch=metrics.batch_rows.observe)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        stop_watching = metrics.watch_gc()
        if options.freeze_gc:
            # the run, its encoder, index and valid split are a few hundred thousand objects
            # that live as long as the server; a full collection scanned them all (~0.1 s on
            # 2 cores, every thread stopped) and landed on the requests in flight
            gc.collect()
            gc.freeze()
        batcher.start()
        yield
        await batcher.close()  # graceful: every accepted request is answered
        if options.freeze_gc:
            gc.unfreeze()
        stop_watching()

    app = FastAPI(title="genctr", lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        metrics.answered("/health", 200)
        return {"status": "ok", "run": str(run.folder), "model": run.config.model_name, "pid": os.getpid(),
                "columns": reader.columns, "strategies": sorted(strategies)}

    @app.get("/metrics")
    async def prometheus() -> Response:
        metrics.answered("/metrics", 200)
        return Response(metrics.text(), media_type="text/plain; version=0.0.4")

    async def predict(scope: dict, receive: Callable, send: Callable) -> None:
        start = time.perf_counter()
        try:
            payload = await _read_json(scope, receive, options.max_body_bytes)
            strategy = requested(payload.get("inference"), strategies)
            rows = reader.read(payload.get("rows"))
            probability, cost = await batcher.submit(strategy, rows)
            status, body = 200, {"probabilities": probability.tolist(),
                                 "cost": float(np.mean(cost)), "inference": strategy}
        except RequestError as err:
            status, body = err.status, err.body()
        except GenctrError as err:  # the encoder refused a value the row check let through
            status, body = 422, {"error": str(err), "row": None, "field": None}
        except Exception as err:  # a bug of ours: logged, answered without a traceback
            print(f"genctr serve: internal error {type(err).__name__}: {err}", file=sys.stderr)
            status, body = 500, {"error": "internal error", "row": None, "field": None}
        await _send_json(send, status, body)
        metrics.answered("/predict", status)
        metrics.latency.observe(time.perf_counter() - start)

    app.state.metrics = metrics
    return PredictFirst(app, predict, batcher)


class PredictFirst:
    """The ASGI app served: `POST /predict` goes straight to its handler, everything else
    (health, metrics, 404s, lifespan) to FastAPI. The framework's routing, dependency and
    middleware layers cost about a third of a 1-row request's CPU, and /predict reads and
    answers its JSON itself anyway (to name the row and field of every error)."""

    def __init__(self, app: FastAPI, predict: Callable, batcher: MicroBatcher) -> None:
        self.app = app
        self.predict = predict
        self.batcher = batcher
        self.state = app.state

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope["path"] == "/predict":
            if scope["method"] == "POST":
                await self.predict(scope, receive, send)
            else:
                await _send_json(send, 405, {"error": "use POST /predict", "row": None, "field": None},
                                 [(b"allow", b"POST")])
            return
        await self.app(scope, receive, send)


async def _read_json(scope: dict, receive: Callable, limit: int) -> dict[str, Any]:
    """The body as a JSON object, read no further than `limit` bytes."""
    declared = dict(scope["headers"]).get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"body of {int(declared):,} bytes; at most {limit:,}")
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestError(400, "the client left before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"body over {limit:,} bytes")
        chunks.append(chunk)
        more = message.get("more_body", False)
    try:
        payload = json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RequestError(400, f"the body is not valid JSON: {err}") from None
    if not isinstance(payload, dict):
        raise RequestError(422, "the body must be a JSON object with 'rows'")
    unknown = sorted(set(payload) - {"rows", "inference"})
    if unknown:
        raise RequestError(422, f"unknown key(s) {unknown}; a request has 'rows' and "
                           "optionally 'inference'", field=unknown[0])
    return payload


async def _send_json(send: Callable, status: int, body: dict[str, Any],
                     headers: list[tuple[bytes, bytes]] = ()) -> None:
    content = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(content)).encode()), *headers]})
    await send({"type": "http.response.body", "body": content})


class _Server(uvicorn.Server):
    """uvicorn's server, but a SIGTERM or SIGINT ends it with status 0 once it has shut down
    gracefully (uvicorn re-raises the signal, so the process would die of it)."""

    @contextmanager
    def capture_signals(self):
        originals = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)


def run_server(app: "PredictFirst", host: str, port: int, fd: int | None = None) -> None:
    """Serve until SIGTERM/SIGINT; requests in flight are finished (up to 30 s). `fd`: accept
    on this inherited listening socket instead (a worker of serve.workers; uvicorn's own `fd`
    option takes it for a Unix socket, so TCP_NODELAY is never set and every answer waits
    ~40 ms for the client's delayed ACK)."""
    server = _Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                    timeout_graceful_shutdown=30))
    app.batcher.connections = lambda: len(server.server_state.connections)  # open, right now
    server.run(sockets=None if fd is None else [socket.socket(fileno=fd)])
