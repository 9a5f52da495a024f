"""Several serving processes on one port (`genctr serve --workers N`).

One Python process answers about one core's worth of requests at most: its event loop and its
scoring thread share the GIL (measured on a 2-core VM with 8 clients: the server at ~110 % CPU,
wrk at ~11 %, the rest idle). Each worker is a `genctr serve` process of its own that loads the
run and accepts connections on a listening socket this parent bound for it; all are bound to
the same address with SO_REUSEPORT, so the kernel spreads new connections over the workers
(per connection: a client's keep-alive connection stays with one worker). The parent first checks
that nothing listens on the port, binds every socket, then only supervises: SIGTERM/SIGINT are
passed on and each worker finishes the requests it accepted; a worker that dies ends the service
(the others are stopped, status 1), there are no restarts. /metrics sums every worker's counters
through prometheus_client's multiprocess mode, in a folder the parent makes and removes.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Callable

from genctr.errors import GenctrError

METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client reads it when it is imported


def free_address(host: str, port: int) -> int:
    """The port (a free one for 0) after checking that nothing listens on it: sockets with
    SO_REUSEPORT would otherwise share the port with another process of this user's that set it
    too (a second `serve --workers` on the same port), and split its connections with it."""
    try:
        with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
            return probe.getsockname()[1]
    except OSError as err:
        raise GenctrError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket a worker inherits; every worker's is bound to the same
    address (SO_REUSEPORT: the kernel spreads new connections over them)."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def supervise(worker_args: list[str], workers: int, host: str, port: int,
              log: Callable[[str], None]) -> int:
    """Start `workers` processes of `genctr serve <worker_args> --listen-fd FD`, each on its own
    socket bound to the port, and wait for them; returns the exit status (0 when stopped by a
    signal and every worker shut down gracefully)."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise GenctrError("--workers needs SO_REUSEPORT (Linux, macOS, BSD); serve with one worker")
    port = free_address(host, port)
    sockets = [listening_socket(host, port) for _ in range(workers)]
    metrics_dir = tempfile.mkdtemp(prefix="genctr-serve-metrics-")
    env = os.environ | {METRICS_DIR_ENV: metrics_dir}
    command = [sys.executable, "-m", "genctr", "serve", *worker_args, "--listen-fd"]
    children: list[subprocess.Popen] = []
    stopping = False

    def stop(signum: int, frame) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    originals = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        children.extend(subprocess.Popen([*command, str(sock.fileno())], pass_fds=(sock.fileno(),),
                                         env=env) for sock in sockets)
        log(f"{workers} workers (pids {', '.join(str(c.pid) for c in children)}) on http://{host}:{port}")
        for sock in sockets:
            sock.close()  # each worker holds its own
        while any(child.poll() is None for child in children):
            failed = [c for c in children if c.poll() not in (None, 0)]
            if failed and not stopping:
                log(f"worker {failed[0].pid} stopped with status {failed[0].returncode}: "
                    "stopping the others")
                stop(signal.SIGTERM, None)
            time.sleep(0.1)
        codes = [child.returncode for child in children]
        return 0 if stopping and all(code == 0 for code in codes) else 1
    finally:
        for sig, handler in originals.items():
            signal.signal(sig, handler)
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
        shutil.rmtree(metrics_dir, ignore_errors=True)  # made above, by this function
