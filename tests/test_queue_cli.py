"""`mailplan queue`, `queue show ID` and `queue flush [DOMAIN]` on a queue with no server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mailplan.cli import main
from mailplan.runtime.decide import retry
from mailplan.runtime.store.spool import Envelope, Spool, new_id

SITE = """\
server:
  hostname: mail.example.com
  main_domain: example.com
queue: {directory: queue, mail_directory: mail, retry: [10m]}
domains:
  example.com:
    accounts:
      alice: {}
"""


@pytest.fixture
def site(tmp_path: Path) -> Path:
    (tmp_path / "site.yaml").write_text(SITE)
    return tmp_path


def queued(site: Path, *recipients: str) -> str:
    spool = Spool(site / "queue")
    envelope = Envelope(
        new_id(),
        1_700_000_000.0,
        "sha256:x",
        "smtp",
        "192.0.2.1",
        "client.test",
        "none",
        "-",
        "alice@example.com",
        recipients,
    )
    spool.store(envelope, b"Subject: waiting\r\n\r\nwaiting\r\n")
    return envelope.id


def run(capsys: pytest.CaptureFixture[str], *arguments: str) -> tuple[int, str, str]:
    status = main(list(arguments))
    out, err = capsys.readouterr()
    return status, out, err


def test_show_and_list(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    queue_id = queued(site, "bob@remote.test", "carol@other.test")
    Spool(site / "queue").journal(
        queue_id, retry.failure_line(1_700_000_100.0, "4.4.1", "bob@remote.test", "refused")
    )
    status, out, _ = run(
        capsys, "queue", "show", queue_id, "--site", str(site), "--root", str(site)
    )
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == f"id         {queue_id}"
    assert "from       <alice@example.com>" in lines
    assert "client     192.0.2.1 helo client.test tls none" in lines
    assert any(
        line.startswith(
            "to         <bob@remote.test>  waits in SMTP(remote.test), 1 failed "
            "attempt(s), last: 4.4.1 refused, next try in"
        )
        for line in lines
    )
    assert "to         <carol@other.test>  waits in SMTP(other.test)" in lines
    status, out, _ = run(capsys, "queue", "--site", str(site), "--root", str(site))
    assert status == 0
    assert out.splitlines()[-1] == "1 message(s), 2 recipient(s) waiting"


def test_show_without_an_id_or_with_a_wrong_one(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "queue", "show", "--site", str(site))[2] == (
        "mailplan: queue show needs a queue id\n"
    )
    status, _, err = run(capsys, "queue", "show", "nope", "--site", str(site), "--root", str(site))
    assert status == 1
    assert err.startswith("mailplan: no queued message nope: ")


def test_flush_without_a_server_marks_the_journals(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = queued(site, "bob@remote.test")
    second = queued(site, "carol@other.test")
    status, out, _ = run(
        capsys, "queue", "flush", "remote.test", "--site", str(site), "--root", str(site)
    )
    assert status == 0
    assert out.splitlines() == [
        "1 message(s) to be tried again now",
        "no server is running on this queue: they are tried at its next start",
    ]
    spool = Spool(site / "queue")
    assert spool.history(first).flushed > 0
    assert spool.history(second).flushed == 0
    # A stale pid file naming a live process that is no mailplan server: this test's.
    (site / "queue" / "mailplan.pid").write_text(f"{os.getpid()}\n")
    status, out, _ = run(capsys, "queue", "flush", "--site", str(site), "--root", str(site))
    assert out.splitlines()[-1] == (
        "no server is running on this queue: they are tried at its next start"
    )


def test_flush_a_u_label_domain_finds_its_queue_in_a_labels(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The queue of bücher.example is named xn--bcher-kva.example; either spelling, in any
    case, flushes it."""
    first = queued(site, "jörg@bücher.example")
    second = queued(site, "carol@other.test")
    for domain in ("Bücher.example", "XN--BCHER-KVA.example"):
        status, out, _ = run(
            capsys, "queue", "flush", domain, "--site", str(site), "--root", str(site)
        )
        assert status == 0
        assert out.splitlines()[0] == "1 message(s) to be tried again now"
    spool = Spool(site / "queue")
    assert spool.history(first).flushed > 0
    assert spool.history(second).flushed == 0


def test_hold_release_delete_without_a_server(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = queued(site, "bob@remote.test")
    second = queued(site, "carol@other.test")
    third = queued(site, "dave@other.test")
    where = ("--site", str(site), "--root", str(site))
    spool = Spool(site / "queue")

    status, out, _ = run(capsys, "queue", "hold", first, *where)
    assert (status, out.splitlines()) == (
        0,
        [
            f"{first}: on hold",
            "1 message(s) on hold",
            "no server is running on this queue: its next start reads the change",
        ],
    )
    assert spool.is_held(first) and not spool.is_held(second)
    status, out, _ = run(capsys, "queue", "hold", "--domain", "other.test", *where)
    assert out.splitlines()[:3] == [
        f"{second}: on hold",
        f"{third}: on hold",
        "2 message(s) on hold",
    ]
    status, out, _ = run(capsys, "queue", "list", *where)
    assert out.splitlines()[-1] == f"3 of them on hold: {' '.join(sorted([first, second, third]))}"
    status, out, _ = run(capsys, "queue", "show", first, *where)
    assert "held       on hold: not delivered until `mailplan queue release`" in out.splitlines()

    status, out, _ = run(capsys, "queue", "release", second, *where)
    assert out.splitlines()[:2] == [f"{second}: released", "1 message(s) released"]
    status, out, err = run(capsys, "queue", "release", second, *where)
    assert (status, err) == (1, f"mailplan: {second}: not on hold\n")
    status, out, _ = run(capsys, "queue", "release", "--all", *where)
    assert sorted(out.splitlines()[:2]) == sorted([f"{first}: released", f"{third}: released"])
    assert not any(spool.is_held(i) for i in (first, second, third))

    status, out, _ = run(capsys, "queue", "hold", third, *where)
    status, out, _ = run(capsys, "queue", "delete", third, *where)
    assert out.splitlines()[:2] == [f"{third}: deleted", "1 message(s) deleted"]
    assert not spool.exists(third) and not spool.is_held(third)
    assert not list((site / "queue").glob(f"{third}.*"))


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        (["hold"], "mailplan: queue hold needs ID... or --domain D\n"),
        (["release"], "mailplan: queue release needs ID... or --all\n"),
        (["delete"], "mailplan: queue delete needs ID...\n"),
        (["delete", "nope"], "mailplan: nope: no such message\n"),
        (["delete", "../../etc/passwd"], "mailplan: ../../etc/passwd: no such message\n"),
        (["show", "a", "b"], "mailplan: queue show takes one DOMAIN or ID\n"),
    ],
    ids=["hold", "release", "delete", "unknown", "not-an-id", "two-ids"],
)
def test_hold_release_delete_mistakes(
    site: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], error: str
) -> None:
    status, _, err = run(capsys, "queue", *arguments, "--site", str(site), "--root", str(site))
    assert status in (1, 2)
    assert err == error
