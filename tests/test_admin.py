"""The admin listener (`admin:`): /healthz, /plan and /metrics after real SMTP traffic, from
a lone server and from a supervisor of two workers; a reload logs what changed."""

from __future__ import annotations

import json
import smtplib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dnskit import NameServer, zone_text
from prometheus_client.parser import text_string_to_metric_families
from serverkit import LOOPBACK, Maildir, MailServer, free_port, mailplan, wait_until
from sitekit import plain, write_site

from mailplan.commands.origin import loader
from mailplan.plan import codec

TIMEOUT = 15.0
UNTRUSTED = "127.0.0.9"  # not a Client IP: it may not relay


class Node:
    """A site with an admin listener, and its server."""

    def __init__(
        self, root: Path, workers: int = 1, resolver: str | None = None, **extra: Any
    ) -> None:
        self.root = root
        self.smtp = free_port()
        self.admin = free_port()
        self.directory = root / "site"
        self.extra = extra
        self.write()
        arguments = ["--workers", str(workers)]
        ports = [self.smtp, self.admin]
        self.server = MailServer(
            self.directory, root, ports, extra_arguments=arguments, resolver=resolver
        )

    def write(self, accounts: tuple[str, ...] = ("alice", "bob")) -> None:
        write_site(
            self.directory,
            listeners={"smtp": plain(self.smtp)},
            accounts=accounts,
            extra={"admin": {"port": self.admin}, **self.extra},
        )

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.admin}"

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=TIMEOUT) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, text = self.get("/metrics")
        assert status == 200, text
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def digest(self) -> str:
        return codec.digest(loader(self.directory, None)())


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


# remote.test exists; every other name of .test does not; nothing else is answered
ZONE = zone_text("test", "remote IN A 192.0.2.1")
CHECKS = {"receiving": {"spf": {"scope": "nobody"}}}


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    with NameServer(tmp_path, {"test": ZONE}) as dns:
        site = Node(tmp_path, resolver=dns.address, **CHECKS)
        with site.server:
            yield site


def send(
    port: int, recipients: list[str], source: str = LOOPBACK, sender: str = "someone@remote.test"
) -> list[int]:
    """One transaction; the reply code of MAIL, of each RCPT, then of DATA if a RCPT was
    accepted."""
    with smtplib.SMTP(LOOPBACK, port, timeout=TIMEOUT, source_address=(source, 0)) as client:
        client.ehlo("client.example.com")
        codes = [client.mail(sender)[0]]
        if codes[0] != 250:
            return codes
        codes += [client.rcpt(recipient)[0] for recipient in recipients]
        if 250 in codes:
            codes.append(client.data(b"Subject: counted\r\n\r\ncounted\r\n")[0])
    return codes


def test_metrics_count_what_was_sent(node: Node) -> None:
    for _ in range(3):
        assert send(node.smtp, ["alice@example.com"]) == [250, 250, 250]
    # an outsider: its Return-Path domain is checked (and this one does not exist)
    assert send(node.smtp, ["bob@example.com"], UNTRUSTED, "x@nowhere.test")[0] >= 400
    # the null sender is not checked, and it may not relay
    codes = send(node.smtp, ["bob@example.com", "x@elsewhere.test"], UNTRUSTED, "")
    assert codes == [250, 250, 550, 250]
    Maildir(node.root / "var/mail/example.com/alice").wait(3)
    Maildir(node.root / "var/mail/example.com/bob").wait(1)

    def delivered() -> bool:
        samples = node.metrics()
        return value(samples, "mailplan_deliveries_total", module="LOCAL", outcome="delivered") == 4

    assert wait_until(delivered, TIMEOUT)
    samples = node.metrics()
    # five clients, and the connection with which MailServer.start saw the port listen
    assert value(samples, "mailplan_connections_total", protocol="smtp") == 5 + 1
    assert value(samples, "mailplan_messages_total", reply="250") == 4
    assert value(samples, "mailplan_recipients_total", reply="250") == 4
    assert value(samples, "mailplan_recipients_total", reply="550") == 1
    assert value(samples, "mailplan_senders_total", reply="250") == 4
    refused = [
        (labels, count)
        for (name, labels), count in samples.items()
        if name == "mailplan_senders_total" and dict(labels)["reply"] != "250"
    ]
    assert sum(count for _, count in refused) == 1
    checks = {
        dict(labels)["action"]: count
        for (name, labels), count in samples.items()
        if name == "mailplan_receiving_checks_total" and dict(labels)["check"] == "return-path"
    }
    assert checks == {"refused": 1, "passed": 1}  # the null sender's is a pass
    assert value(samples, "mailplan_journal_sync_seconds_count") >= 1
    assert value(samples, "mailplan_reload_last_success") == 1
    assert value(samples, "mailplan_plan_served", worker="0", digest=node.digest()) == 1


def test_queue_depth_and_oldest_age(node: Node) -> None:
    # a Client IP relays; DNS refuses to say where remote.example is: the recipient waits
    assert send(node.smtp, ["x@remote.example"]) == [250, 250, 250]

    def deferred() -> bool:
        samples = node.metrics()
        return value(samples, "mailplan_deliveries_total", module="SMTP", outcome="deferred") == 1

    assert wait_until(deferred, TIMEOUT)
    samples = node.metrics()
    assert value(samples, "mailplan_queue_recipients", queue="SMTP(remote.example)") == 1
    assert value(samples, "mailplan_queue_oldest_seconds", queue="SMTP(remote.example)") >= 0
    assert value(samples, "mailplan_queue_held_messages") == 0


def test_healthz_and_plan(node: Node) -> None:
    status, text = node.get("/healthz")
    assert (status, json.loads(text)["status"]) == (200, "ok")
    status, text = node.get("/plan")
    document = json.loads(text)
    assert status == 200
    assert document["digest"] == document["loaded"] == node.digest()
    assert document["hostname"] == "mail.example.com"
    assert [w["worker"] for w in document["workers"]] == [0]
    assert {s["path"] for s in document["sources"]} == {"site.yaml"}
    assert node.get("/nothing")[0] == 404


def test_workers_are_counted_and_served_together(tmp_path: Path) -> None:
    node = Node(tmp_path, workers=2)
    with node.server:
        before = node.digest()
        for _ in range(6):  # the kernel spreads the connections over both workers
            assert send(node.smtp, ["alice@example.com"]) == [250, 250, 250]
        Maildir(tmp_path / "var/mail/example.com/alice").wait(6)
        samples = node.metrics()
        assert value(samples, "mailplan_messages_total", reply="250") == 6
        assert value(samples, "mailplan_connections_total", protocol="smtp") == 6 + 1

        def both_serve_the_first_plan() -> bool:  # one may have taken no connection yet
            return bool(json.loads(node.get("/plan")[1])["digest"] == before)

        assert wait_until(both_serve_the_first_plan, TIMEOUT)
        document = json.loads(node.get("/plan")[1])
        assert sorted(w["worker"] for w in document["workers"]) == [0, 1]

        node.write(accounts=("alice", "bob", "carol"))
        after = node.digest()
        mark = len(node.server.log())
        node.server.reload()

        def both_serve_the_new_plan() -> bool:
            workers = json.loads(node.get("/plan")[1])["workers"]
            return all(w.get("digest") == after for w in workers)

        assert wait_until(both_serve_the_new_plan, TIMEOUT)
        assert node.server.wait_for_log("reload: accounts: account carol@example.com", after=mark)
        samples = node.metrics()
        assert value(samples, "mailplan_reloads_total", result="ok") == 2  # one per worker
        assert json.loads(node.get("/plan")[1])["loaded"] == after


def test_a_reload_logs_its_diff_and_a_refused_one_is_counted(node: Node) -> None:
    before = node.digest()
    node.write(accounts=("alice",))  # bob is removed
    after = node.digest()
    mark = len(node.server.log())
    node.server.reload()
    assert node.server.wait_for_log(f"reloaded: serving plan {after}", after=mark)
    log = node.server.log()[mark:]
    assert "INFO reload: UNSAFE accounts: account bob@example.com removed (" in log
    assert "INFO reload: 4 changes, 1 unsafe\n" in log  # logins, digests
    assert json.loads(node.get("/plan")[1])["digest"] == after != before

    (node.directory / "site.yaml").write_text("server: [\n")
    mark = len(node.server.log())
    node.server.reload()
    assert node.server.wait_for_log("reload refused", after=mark)
    samples = node.metrics()
    assert value(samples, "mailplan_reloads_total", result="ok") == 1
    assert value(samples, "mailplan_reloads_total", result="refused") == 1
    assert value(samples, "mailplan_reload_last_success") == 0
    document = json.loads(node.get("/plan")[1])
    assert document["digest"] == after
    assert document["workers"][0]["last_reload"].startswith("refused: ")


def test_admin_port_in_use_is_one_line(tmp_path: Path) -> None:
    import socket

    node = Node(tmp_path)
    with socket.socket() as taken:
        taken.bind((LOOPBACK, node.admin))
        taken.listen()
        node.server.ports = [(LOOPBACK, node.smtp)]
        with pytest.raises(Exception, match="admin listener"):
            node.server.start()
    assert "Traceback" not in node.server.log()


def test_status_prints_one_block_per_node(tmp_path: Path) -> None:
    with NameServer(tmp_path, {"test": ZONE}) as dns:
        first = Node(tmp_path / "a", resolver=dns.address, **CHECKS)
        # another node: on one host its ports differ, and so does its plan
        second = Node(tmp_path / "b", resolver=dns.address, **CHECKS)
        with first.server, second.server:
            assert send(first.smtp, ["alice@example.com"]) == [250, 250, 250]
            Maildir(first.root / "var/mail/example.com/alice").wait(1)
            status = mailplan("status", "--server", first.url)
            assert status.returncode == 0, status.stderr
            bare = mailplan("status", "--server", f"{LOOPBACK}:{first.admin}")  # no scheme
            assert bare.stdout == status.stdout
            block = status.stdout.split("\n\n")[0]
            assert block.startswith(f"{first.url}  mail.example.com\n")
            assert f"  plan         {first.digest()}\n" in block
            assert "  served by    1 of 1 worker(s)" in block
            assert "  health       ok\n" in block
            assert "  messages     250 1\n" in block
            assert "  deliveries   LOCAL delivered 1\n" in block
            assert "  queue        empty; 0 held\n" in block
            assert status.stdout.endswith(f"all 1 node(s) serve {first.digest()}\n")

            status = mailplan("status", "--server", first.url, "--server", f"{second.url}/")
            assert status.returncode == 1  # a rollout under way, or a node left behind
            blocks = status.stdout.split("\n\n")
            assert blocks[1].startswith(f"{second.url}  mail.example.com\n")
            assert "  messages     none\n" in blocks[1]
            assert status.stdout.splitlines()[-1] == (
                f"nodes differ: {first.digest()} on {first.url}; {second.digest()} on {second.url}"
                if first.digest() < second.digest()
                else f"nodes differ: {second.digest()} on {second.url}; "
                f"{first.digest()} on {first.url}"
            )

    gone = mailplan("status", "--server", first.url)
    assert gone.returncode == 1
    assert f"{first.url}\n  unreachable: connection refused\n" in gone.stdout
    assert "Traceback" not in gone.stderr


def test_retries_and_bounces_are_counted(tmp_path: Path) -> None:
    """Mail for a domain DNS does not know waits, is tried again, is given up: a retry, then
    an expiry and a bounce, which is delivered to its local sender."""
    queue = {"queue": {"retry": ["1s"], "give_up_after": "1s"}}
    with NameServer(tmp_path, {"test": ZONE}) as dns:
        node = Node(tmp_path, resolver=dns.address, **CHECKS, **queue)
        with node.server:
            with smtplib.SMTP(LOOPBACK, node.smtp, timeout=TIMEOUT) as client:
                client.sendmail("alice@example.com", ["x@remote.example"], b"\r\nlost\r\n")
            Maildir(tmp_path / "var/mail/example.com/alice").wait(1, TIMEOUT)  # the bounce

            def bounced() -> bool:
                samples = node.metrics()
                return value(samples, "mailplan_bounces_total", action="failed") == 1

            assert wait_until(bounced, TIMEOUT)
            samples = node.metrics()
            deliveries = "mailplan_deliveries_total"
            assert value(samples, deliveries, module="SMTP", outcome="deferred") == 1
            assert value(samples, deliveries, module="SMTP", outcome="expired") == 1
            assert value(samples, deliveries, module="LOCAL", outcome="delivered") == 1
