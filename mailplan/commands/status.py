"""`mailplan status --server URL ...`: what running servers say on their admin listeners
(/healthz, /plan, /metrics), one block per node, and whether they all serve one plan."""

from __future__ import annotations

import argparse
import json
import time
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mailplan.commands.origin import Subcommands

TIMEOUT = 5.0

Samples = dict[str, list[tuple[dict[str, str], float]]]


def add_parser(subcommands: Subcommands) -> None:
    status = subcommands.add_parser(
        "status", help="what running servers serve, from their admin listeners"
    )
    status.add_argument(
        "--server",
        action="append",
        required=True,
        metavar="URL",
        help="an admin listener, e.g. http://127.0.0.1:9025 (again for more nodes)",
    )
    status.add_argument("--format", choices=("text", "json"), default="text")
    status.set_defaults(run=_status)


@dataclass
class Node:
    url: str
    problem: str | None = None
    health: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)
    samples: Samples = field(default_factory=dict)

    @property
    def digest(self) -> str | None:
        return self.plan.get("digest") if self.problem is None else None


def _status(arguments: argparse.Namespace) -> int:
    nodes = [_ask(_url(given)) for given in arguments.server]
    digests = {node.digest for node in nodes}
    agreed = len(digests) == 1 and None not in digests
    healthy = all(n.problem is None and n.health.get("status") == "ok" for n in nodes)
    if arguments.format == "json":
        report = {
            "nodes": [
                {"url": n.url, "problem": n.problem, "health": n.health, "plan": n.plan}
                for n in nodes
            ],
            "digest": digests.pop() if agreed else None,
        }
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        for node in nodes:
            print("\n".join(_block(node)) + "\n")
        print(_rollout(nodes, agreed))
    return 0 if agreed and healthy else 1


def _url(given: str) -> str:
    """An admin listener's address as given: `http://HOST:PORT`, or `HOST:PORT` alone."""
    return (given if "://" in given else f"http://{given}").rstrip("/")


def _ask(url: str) -> Node:
    from prometheus_client.parser import text_string_to_metric_families

    node = Node(url)
    try:
        _, health = _get(url + "/healthz")  # 503 answers too: it says which worker is not up
        node.health = json.loads(health)
        node.plan = json.loads(_get(url + "/plan")[1])
        text = _get(url + "/metrics")[1]
    except (OSError, ValueError) as exc:
        node.problem = _why(exc)
        return node
    samples: Samples = defaultdict(list)
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[sample.name].append((sample.labels, sample.value))
    except ValueError as exc:
        node.problem = f"/metrics is not Prometheus text: {exc}"
    node.samples = dict(samples)
    return node


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as answer:
            return answer.status, answer.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        if error.code == 503:
            return error.code, error.read().decode("utf-8", "replace")
        raise


def _why(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        return str(getattr(reason, "strerror", None) or reason).lower()
    if isinstance(exc, ValueError):
        return f"not an admin listener's answer: {exc}"
    return str(getattr(exc, "strerror", None) or exc).lower()


def _block(node: Node) -> list[str]:
    if node.problem is not None:
        return [node.url, f"  unreachable: {node.problem}"]
    plan, samples = node.plan, node.samples
    workers = plan.get("workers", [])
    serving = [w for w in workers if w.get("digest")]
    digest = plan.get("digest") or "MIXED (see workers)"
    lines = [
        f"{node.url}  {plan.get('hostname', '?')}",
        f"  plan         {digest}",
        f"  served by    {len(serving)} of {len(workers)} worker(s); loaded {plan.get('loaded')}",
        f"  health       {node.health.get('status', '?')}",
    ]
    for worker in workers:
        if not worker.get("digest"):
            lines.append(f"  worker {worker.get('worker')}     not serving")
            continue
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(worker["started"]))
        lines.append(
            f"  worker {worker['worker']}     pid {worker['pid']} since {since},"
            f" {worker['reloads']} reload(s), last: {worker['last_reload']}"
            f"{'' if worker['digest'] == plan.get('digest') else ', plan ' + worker['digest']}"
        )
    lines += [
        _counts("connections", samples, "mailplan_connections_total", "protocol"),
        _counts("messages", samples, "mailplan_messages_total", "reply"),
        _counts("recipients", samples, "mailplan_recipients_total", "reply"),
        _counts("deliveries", samples, "mailplan_deliveries_total", "module", "outcome"),
        _counts("bounces", samples, "mailplan_bounces_total", "action"),
        _counts("checks", samples, "mailplan_receiving_checks_total", "check", "result"),
        _counts("reloads", samples, "mailplan_reloads_total", "result"),
        _queues(samples),
        _sync(samples),
    ]
    return lines


def _counts(title: str, samples: Samples, name: str, *labels: str) -> str:
    found = sorted(
        (" ".join(found.get(label, "?") for label in labels), value)
        for found, value in samples.get(name, [])
        if value
    )
    shown = ", ".join(f"{key} {value:.0f}" for key, value in found) or "none"
    return f"  {title:<12} {shown}"


def _queues(samples: Samples) -> str:
    ages = samples.get("mailplan_queue_oldest_seconds", [])
    oldest = {labels["queue"]: value for labels, value in ages}
    parts = [
        f"{labels['queue']} {value:.0f} (oldest {_age(oldest.get(labels['queue'], 0.0))})"
        for labels, value in sorted(
            samples.get("mailplan_queue_recipients", []), key=lambda s: s[0]["queue"]
        )
    ]
    held = sum(value for _, value in samples.get("mailplan_queue_held_messages", []))
    return f"  {'queue':<12} {', '.join(parts) or 'empty'}; {held:.0f} held"


def _sync(samples: Samples) -> str:
    count = sum(v for _, v in samples.get("mailplan_journal_sync_seconds_count", []))
    total = sum(v for _, v in samples.get("mailplan_journal_sync_seconds_sum", []))
    mean = f", mean {total / count * 1000:.2f} ms" if count else ""
    return f"  {'journal sync':<12} {count:.0f}{mean}"


def _rollout(nodes: list[Node], agreed: bool) -> str:
    if agreed:
        return f"all {len(nodes)} node(s) serve {nodes[0].digest}"
    by_digest: dict[str, list[str]] = defaultdict(list)
    for node in nodes:
        by_digest[node.digest or "(unknown)"].append(node.url)
    return "nodes differ: " + "; ".join(
        f"{digest} on {', '.join(urls)}" for digest, urls in sorted(by_digest.items())
    )


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"
