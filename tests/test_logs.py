"""Log lines for the journal: `<N>` syslog priorities, and knowing when stderr is the journal."""

from __future__ import annotations

import io
import json
import logging
import os
import queue
import sys
from pathlib import Path

import pytest

from mailplan.runtime.serve import logs
from mailplan.runtime.serve.logs import PriorityFormatter, journal_stream, priority, to_journal


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        (logging.DEBUG, 7),
        (logging.INFO, 6),
        (logging.WARNING, 4),
        (logging.ERROR, 3),
        (logging.CRITICAL, 2),
        (5, 7),  # below DEBUG
        (25, 6),  # between INFO and WARNING
        (35, 4),
        (60, 2),  # above CRITICAL
    ],
    ids=lambda value: str(value),
)
def test_priority(level: int, expected: int) -> None:
    assert priority(level) == expected


def _record(level: int, message: str, exc_info: bool = False) -> logging.LogRecord:
    info = None
    if exc_info:
        try:
            raise OSError("disk full")
        except OSError:
            info = sys.exc_info()
    return logging.LogRecord("mailplan.server", level, __file__, 1, message, (), info)


def test_a_line_starts_with_its_priority() -> None:
    formatter = PriorityFormatter("%(name)s %(levelname)s %(message)s")
    assert formatter.format(_record(logging.ERROR, "reload refused")) == (
        "<3>mailplan.server ERROR reload refused"
    )
    assert formatter.format(_record(logging.INFO, "serving plan sha256:38ac")) == (
        "<6>mailplan.server INFO serving plan sha256:38ac"
    )


def test_every_line_of_a_traceback_has_the_priority() -> None:
    text = PriorityFormatter("%(message)s").format(_record(logging.ERROR, "cannot queue", True))
    lines = text.split("\n")
    assert lines[0] == "<3>cannot queue"
    assert lines[1] == "<3>Traceback (most recent call last):"
    assert lines[-1] == "<3>OSError: disk full"
    assert all(line.startswith("<3>") for line in lines)


def test_an_inner_formatter_gives_the_text() -> None:
    class Json(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return json.dumps({"level": record.levelname, "message": record.getMessage()})

    formatter = PriorityFormatter(inner=Json())
    assert formatter.format(_record(logging.WARNING, "listeners changed")) == (
        '<4>{"level": "WARNING", "message": "listeners changed"}'
    )


def test_through_a_handler() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(PriorityFormatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("mailplan.test_logs")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("a")
        logger.critical("b")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    assert stream.getvalue() == "<4>WARNING a\n<2>CRITICAL b\n"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("64769:1234", True),
        ("64769:1235", False),
        ("1:1234", False),
        ("", False),
        (None, False),
        ("64769", False),
        ("dev:ino", False),
        ("64769:1234:5", False),
    ],
    ids=repr,
)
def test_journal_stream(value: str | None, expected: bool) -> None:
    assert journal_stream(value, 64769, 1234) is expected


def test_to_journal_compares_the_stream_itself(tmp_path: Path) -> None:
    journal, other = tmp_path / "journal", tmp_path / "other"
    with journal.open("w") as stream, other.open("w") as elsewhere:
        status = os.fstat(stream.fileno())
        environ = {"JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"}
        assert to_journal(stream, environ) is True
        assert to_journal(elsewhere, environ) is False  # inherited, but redirected
        assert to_journal(stream, {}) is False
    assert to_journal(io.StringIO(), environ) is False  # no descriptor
    assert to_journal(stream, environ) is False  # closed


def test_to_journal_reads_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with (tmp_path / "journal").open("w") as stream:
        status = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{status.st_dev}:{status.st_ino}")
        assert to_journal(stream) is True
        monkeypatch.delenv("JOURNAL_STREAM")
        assert to_journal(stream) is False


# -- --log-format json, end to end -------------------------------------------------------


def test_json_lines_carry_the_queue_id_client_and_listener(tmp_path: Path) -> None:
    import smtplib

    from serverkit import LOOPBACK, MailServer, free_port
    from sitekit import plain, write_site

    port = free_port()
    site = write_site(tmp_path / "site", listeners={"smtp": plain(port)})
    arguments = ["--log-format", "json", "--log-level", "debug"]
    with MailServer(site, tmp_path, [port], extra_arguments=arguments) as server:
        with smtplib.SMTP(LOOPBACK, port, timeout=10) as client:
            client.sendmail("a@remote.test", ["alice@example.com"], b"Subject: x\r\n\r\nx\r\n")
            client.mail("a@remote.test")
            code, _ = client.rcpt("nobody@example.com")
            assert code == 550
        assert server.wait_for_log("accepted from")
        assert server.wait_for_log("refused <nobody@example.com>")
        assert server.wait_for_log(" delivered to LOCAL")
    lines = [json.loads(line) for line in server.log().splitlines()]
    accepted = next(line for line in lines if "accepted from" in line["message"])
    assert accepted["level"] == "info"
    assert accepted["logger"] == "mailplan.smtp"
    assert accepted["client"] == LOOPBACK
    assert accepted["listener"] == "smtp"
    assert accepted["message"].startswith(accepted["queue_id"] + " accepted from ")
    refused = next(line for line in lines if "refused <" in line["message"])
    assert refused["recipient"] == "nobody@example.com"
    assert {"time", "level", "logger", "message"} <= set(refused)
    delivered = next(line for line in lines if " delivered to LOCAL" in line["message"])
    assert delivered["queue_id"] == accepted["queue_id"]
    assert delivered["recipient"] == "alice@example.com"
    assert delivered["source"].startswith("site.yaml:")  # the line that made alice an account


def test_json_formatter_keeps_a_traceback_and_unknown_types() -> None:
    formatter = logs.JsonFormatter()
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "%s", ("bad",), sys.exc_info())
    handler = logs._Enqueue(queue.SimpleQueue())
    prepared = handler.prepare(record)
    prepared.host = Path("/not/a/string")
    line = json.loads(formatter.format(prepared))
    assert line["message"] == "bad"
    assert "ValueError: boom" in line["exception"]
    assert line["host"] == "/not/a/string"


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text")


def test_a_line_that_cannot_be_written_costs_only_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer writes the lines that gathered with one write; one whose formatting
    fails (a fact with no text) is reported, and the lines around it are still written."""
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    writer = logs.Writer("json", "info")
    try:
        log = logging.getLogger("mailplan.test")
        log.info("first")
        log.info("broken", extra={"host": _Unprintable()})
        log.info("last")
    finally:
        writer.stop()
        root.handlers[:], root.level = saved
    lines = [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]
    assert [line["message"] for line in lines] == ["first", "last"]
    assert "RuntimeError: no text" in out.getvalue()  # the logging module's report of it
