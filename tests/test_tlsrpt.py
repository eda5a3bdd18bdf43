"""TLS reporting (RFC 8460): counting, the `_smtp._tls` record and the report
(runtime/decide/tlsrpt.py, pure), and the durable counts (runtime/delivery/tlsrpt.py)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import gzip
import json
from pathlib import Path

import jsonschema
import pytest
from tlskit import REPORT_SCHEMA

from mailplan.runtime.decide import tlsneed, tlsrpt
from mailplan.runtime.decide.mtasts import StsPolicy
from mailplan.runtime.decide.tlsneed import TlsFacts
from mailplan.runtime.delivery import tlsrpt as reporting

POLICY = StsPolicy("testing", ("mx.example.net",), 86400, "a1", 0.0)
NEED = tlsneed.need(TlsFacts("example.net", sts=POLICY, sts_note="fetched"))


def session(success: bool, result: str = "", ip: str = "192.0.2.1") -> tlsrpt.TlsSession:
    return tlsrpt.TlsSession(NEED, success, result, "", "mx.example.net", ip)


def test_sessions_are_counted_per_day_and_domain() -> None:
    counts: tlsrpt.Counts = {}
    for made in (
        session(True),
        session(True),
        session(False, "certificate-expired"),
        session(False, "certificate-expired"),
        session(False, "starttls-not-supported", "192.0.2.2"),
    ):
        tlsrpt.count(counts, "2026-12-06", made)
    tlsrpt.count(counts, "2026-12-07", session(True))
    entry = counts["2026-12-06"]["example.net"]
    assert entry["success"] == 2
    assert entry["failures"] == [
        ["certificate-expired", "", "mx.example.net", "192.0.2.1", 2],
        ["starttls-not-supported", "", "mx.example.net", "192.0.2.2", 1],
    ]
    assert entry["policy-type"] == "sts"
    assert entry["policy-string"] == POLICY.text().split("\n")
    assert tlsrpt.due(counts, "2026-12-07") == ["2026-12-06"]
    assert tlsrpt.due(counts, "2026-12-08") == ["2026-12-06", "2026-12-07"]


def test_failure_rows_are_capped() -> None:
    counts: tlsrpt.Counts = {}
    for n in range(tlsrpt.MAX_FAILURE_ROWS + 5):
        tlsrpt.count(
            counts, "d", session(False, "validation-failure", f"10.0.{n // 250}.{n % 250}")
        )
    rows = counts["d"]["example.net"]["failures"]
    assert len(rows) == tlsrpt.MAX_FAILURE_ROWS
    assert sum(row[4] for row in rows) == tlsrpt.MAX_FAILURE_ROWS + 5


@pytest.mark.parametrize(
    ("texts", "expected"),
    [
        (
            ["v=TLSRPTv1; rua=mailto:tls@example.net,https://r.example.net/x"],
            ("mailto:tls@example.net", "https://r.example.net/x"),
        ),
        (["v=TLSRPTv1;rua=mailto:a@b.example"], ("mailto:a@b.example",)),
        (["v=TLSRPTv1; rua=ftp://x.example"], ()),
        (["v=TLSRPTv1; rua=mailto:a@b", "v=TLSRPTv1; rua=mailto:c@d"], ()),  # two: none
        (["v=spf1 -all"], ()),
        ([], ()),
    ],
)
def test_the_record(texts: list[str], expected: tuple[str, ...]) -> None:
    assert tlsrpt.rua(texts) == expected


def test_the_report_and_its_message() -> None:
    counts: tlsrpt.Counts = {}
    tlsrpt.count(counts, "2026-12-06", session(True))
    tlsrpt.count(counts, "2026-12-06", session(False, "certificate-expired"))
    entry = counts["2026-12-06"]["example.net"]
    document = tlsrpt.report(
        "2026-12-06", "example.net", entry, "mail.example.com", "mailto:pm@example.com", "r1"
    )
    jsonschema.validate(document, REPORT_SCHEMA)
    assert document["policies"] == [
        {
            "policy": {
                "policy-type": "sts",
                "policy-domain": "example.net",
                "policy-string": POLICY.text().split("\n"),
                "mx-host": ["mx.example.net"],
            },
            "summary": {"total-successful-session-count": 1, "total-failure-session-count": 1},
            "failure-details": [
                {
                    "result-type": "certificate-expired",
                    "receiving-mx-hostname": "mx.example.net",
                    "receiving-ip": "192.0.2.1",
                    "failed-session-count": 1,
                }
            ],
        }
    ]
    raw, payload = tlsrpt.message(
        document, "mail.example.com", "pm@example.com", "tls@example.net", 1796601600.0
    )
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["Subject"] == (
        "Report Domain: example.net Submitter: mail.example.com Report-ID: <r1>"
    )
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == "tlsrpt"
    parts = list(parsed.iter_parts())  # type: ignore[attr-defined]
    assert [p.get_content_type() for p in parts] == ["text/plain", "application/tlsrpt+gzip"]
    assert (
        parts[1].get_filename() == "mail.example.com!example.net!1796515200!1796601599!r1.json.gz"
    )
    assert parts[1].get_content() == payload
    assert json.loads(gzip.decompress(payload)) == document
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")


def test_counts_survive_a_restart(tmp_path: Path) -> None:
    async def run() -> None:
        reports = reporting.Reports(tmp_path)
        reports.observe(session(True))
        reports.observe(session(False, "certificate-expired"))
        await reports.save()

    asyncio.run(run())
    again = reporting.Reports(tmp_path)
    (day,) = again.counts.values()
    assert day["example.net"]["success"] == 1
    assert day["example.net"]["failures"][0][0] == "certificate-expired"
    assert not (tmp_path / "tls-rpt.tmp").exists()


def test_unreadable_counts_start_afresh(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "tls-rpt.json").write_text("[1, 2")
    assert reporting.Reports(tmp_path).counts == {}
    assert "cannot read the TLS report counts, starting afresh" in caplog.text
