"""The admin listener (`admin:` in site.yaml): `GET /healthz`, `GET /plan`, `GET /metrics`.

HTTP from the standard library's `http.server`, answering from a thread of its own (a lone
server) or from a process of its own that the supervisor of `serve --workers N` starts
(no thread may run in the supervisor, which forks). Either way it answers for every
worker: each worker says what it serves in a small file of the admin folder
(`announce`: its digest, when it started, its last reload), and counts into
prometheus-client's multiprocess files there (`runtime.base.metrics.share`). The queue's
depth and oldest age are read from the queue directory at each scrape. docs/admin.md
says what each answer holds.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from mailplan.plan import codec
from mailplan.plan.model import Admin, Plan
from mailplan.runtime.decide.router import Router
from mailplan.runtime.queue.processor import pending
from mailplan.runtime.serve.startup import StartupError, listening, why
from mailplan.runtime.store.spool import Spool, held

log = logging.getLogger("mailplan.admin")

FOLDER = "admin"  # in the queue directory: the workers' files and the metrics' files


def folder(queue: Path) -> Path:
    return queue / FOLDER


def bind(settings: Admin | None, dev: bool) -> socket.socket | None:
    """The admin listener's socket, bound with the others (before root is given up);
    `--dev` keeps it on 127.0.0.1. None when the site has no `admin:`."""
    if settings is None:
        return None
    address = "127.0.0.1" if dev else settings.bind
    try:
        return listening(address, settings.port)
    except OSError as exc:
        where = f"cannot listen on {address} port {settings.port} (admin listener)"
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(f"{where}: the port is in use; change admin.port") from exc
        raise StartupError(f"{where}: {why(exc)}") from exc


@dataclass(frozen=True)
class Serving:
    """What one worker (or a lone server) says it serves: `serving-INDEX.json`."""

    worker: int
    pid: int
    digest: str
    started: float
    reloads: int = 0
    last_reload: str = "none"  # none, ok, or refused: the reason
    last_reload_at: float = 0.0


def announce(directory: Path, serving: Serving) -> None:
    """Write what this process serves (atomically: a scrape never reads half of it)."""
    path = directory / f"serving-{serving.worker}.json"
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(asdict(serving), sort_keys=True) + "\n")
    os.replace(temporary, path)


def servings(directory: Path, workers: int) -> list[Serving | None]:
    """What each worker announced, by index (None: nothing yet, or it is not running)."""
    found: list[Serving | None] = []
    for index in range(workers):
        try:
            data = json.loads((directory / f"serving-{index}.json").read_text())
            serving: Serving | None = Serving(**data)
        except (OSError, ValueError, TypeError):
            serving = None
        if serving is not None and not _alive(serving.pid):
            serving = None
        found.append(serving)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Node:
    """What the admin listener answers from: the plan (for the queue's logical names and the
    build), the queue, the admin folder and how many workers there should be."""

    plan: Callable[[], Plan]
    queue: Path
    workers: int

    @property
    def directory(self) -> Path:
        return folder(self.queue)

    def health(self) -> tuple[int, dict[str, Any]]:
        """200 when every worker serves, 503 otherwise, with who does not."""
        missing = [i for i, s in enumerate(servings(self.directory, self.workers)) if s is None]
        if missing:
            return 503, {"status": "unhealthy", "workers_not_serving": missing}
        return 200, {"status": "ok", "workers": self.workers}

    def plan_document(self) -> dict[str, Any]:
        """The digest each worker serves, and the build of the plan this node loaded."""
        plan = self.plan()
        workers = servings(self.directory, self.workers)
        digests = {s.digest for s in workers if s is not None}
        return {
            "hostname": plan.server.hostname,
            "digest": digests.pop() if len(digests) == 1 and all(workers) else None,
            "loaded": codec.digest(plan),
            "format": plan.format,
            "mailplan": _version(),
            "sources": [{"path": s.path, "sha256": s.sha256} for s in plan.sources],
            "workers": [
                asdict(s) if s is not None else {"worker": i, "serving": False}
                for i, s in enumerate(workers)
            ],
        }

    def metrics(self) -> bytes:
        registry = CollectorRegistry()
        with contextlib.suppress(ValueError):  # no multiprocess folder: nothing counted yet
            MultiProcessCollector(registry, str(self.directory))  # type: ignore[no-untyped-call]
        registry.register(_NodeCollector(self))
        return generate_latest(registry)


class _NodeCollector(Collector):
    """What is read at each scrape rather than counted: the queue, the plans served."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        node = self.node
        spool = Spool(node.queue)
        waiting = pending(spool, Router(node.plan()))
        now = time.time()
        depth = GaugeMetricFamily(
            "mailplan_queue_recipients", "Recipients waiting, by logical queue", labels=["queue"]
        )
        oldest = GaugeMetricFamily(
            "mailplan_queue_oldest_seconds",
            "Age of the oldest message waiting, by logical queue",
            labels=["queue"],
        )
        queues: dict[str, list[float]] = {}
        for entry in waiting:
            queues.setdefault(entry.queue, []).append(entry.arrived)
        for name, arrivals in sorted(queues.items()):
            depth.add_metric([name], len(arrivals))
            oldest.add_metric([name], max(0.0, now - min(arrivals)))
        yield depth
        yield oldest
        yield GaugeMetricFamily(
            "mailplan_queue_held_messages", "Messages on hold", value=len(held(spool))
        )
        serving = GaugeMetricFamily(
            "mailplan_plan_served",
            "1 for the plan digest each worker serves",
            labels=["worker", "digest"],
        )
        for index, found in enumerate(servings(node.directory, node.workers)):
            if found is not None:
                serving.add_metric([str(index), found.digest], 1)
        yield serving


def _version() -> str:
    try:
        return metadata.version("mailplan")
    except metadata.PackageNotFoundError:
        return "unknown"


class _Handler(BaseHTTPRequestHandler):
    node: Node  # set on the class `serve` makes
    server_version = "mailplan-admin"

    def do_GET(self) -> None:
        path = self.path.partition("?")[0]
        try:
            if path == "/healthz":
                status, document = self.node.health()
                self._send(status, "application/json", _json(document))
            elif path == "/plan":
                self._send(200, "application/json", _json(self.node.plan_document()))
            elif path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, self.node.metrics())
            else:
                hint = b"not found: try /healthz, /plan or /metrics\n"
                self._send(404, "text/plain; charset=utf-8", hint)
        except Exception as exc:  # a scrape that fails is one line in the log and a 500
            log.error("admin: GET %s failed: %s", path, exc)
            self._send(500, "text/plain; charset=utf-8", f"error: {exc}\n".encode())

    def _send(self, status: int, kind: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("admin: %s %s", self.address_string(), format % args)


def _json(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()


class _Server(ThreadingHTTPServer):
    daemon_threads = True


def server(sock: socket.socket, node: Node) -> ThreadingHTTPServer:
    """An HTTP server answering on `sock` (bound and listening already) from `node`."""
    handler = type("Handler", (_Handler,), {"node": node})
    http = _Server(sock.getsockname()[:2], handler, bind_and_activate=False)
    http.socket.close()
    http.socket = sock
    http.server_address = sock.getsockname()[:2]
    return http


def in_thread(sock: socket.socket, node: Node) -> ThreadingHTTPServer:
    """Answer from a thread of this process (a lone server); `shutdown()` stops it."""
    http = server(sock, node)
    threading.Thread(target=http.serve_forever, name="admin", daemon=True).start()
    return http


def in_process(
    sock: socket.socket, load: Callable[[], Plan], plan: Plan, queue: Path, workers: int
) -> int:
    """Answer in this process until it is killed: the supervisor of `serve --workers N`
    starts it, and forwards SIGHUP to it as to the workers (the plan is read again, for
    the queue's logical names and /plan's build)."""
    current = [plan]
    lock = threading.Lock()

    def reload(number: int, frame: object) -> None:
        try:
            fresh = load()
        except Exception as exc:
            log.error("admin: reload refused: %s", exc)
            return
        with lock:
            current[0] = fresh

    def now() -> Plan:
        with lock:
            return current[0]

    signal.signal(signal.SIGHUP, reload)
    host, port = sock.getsockname()[:2]
    log.info("admin listener on %s port %d (/healthz, /plan, /metrics)", host, port)
    server(sock, Node(now, queue, workers)).serve_forever()
    return 0
