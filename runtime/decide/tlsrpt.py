"""SMTP TLS reporting (RFC 8460), the pure part: counting sessions per policy domain and
day, the `_smtp._tls` record, and the daily report (its JSON and the message that
carries it).

Counts are plain JSON-able dictionaries, so that `runtime/delivery/tlsrpt.py` keeps them
in a file as they are:

    {"2026-12-06": {"example.net": {"policy-type": "sts", "policy-string": [...],
                                    "mx-host": [...], "success": 12,
                                    "failures": [[result-type, sending-ip, mx, ip, count]]}}}
"""

from __future__ import annotations

import datetime
import gzip
import json
import re
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any

from mailplan.runtime.decide.tlsneed import Need

Counts = dict[str, dict[str, dict[str, Any]]]
MEDIA_TYPE = ("application", "tlsrpt+gzip")  # RFC 8460 §6.4
MAX_FAILURE_ROWS = 1000  # per policy domain and day: what a report lists at most


@dataclass(frozen=True)
class TlsSession:
    """One TLS session attempt to a host of a domain with a policy: success, or a
    failure with its RFC 8460 result type."""

    need: Need
    success: bool
    result: str = ""
    sending_ip: str = ""
    mx: str = ""
    ip: str = ""


def day_of(moment: float) -> str:
    """The UTC day of a time (seconds since the epoch), as reports are dated."""
    return datetime.datetime.fromtimestamp(moment, datetime.UTC).strftime("%Y-%m-%d")


def count(counts: Counts, day: str, session: TlsSession) -> None:
    """Add one session to `counts` (in place: the caller owns the dictionary)."""
    need = session.need
    entry = counts.setdefault(day, {}).setdefault(need.domain, {"success": 0, "failures": []})
    entry["policy-type"] = need.policy_type
    entry["policy-string"] = list(need.policy_strings)
    entry["mx-host"] = list(need.mx_patterns)
    if session.success:
        entry["success"] += 1
        return
    key = [session.result, session.sending_ip, session.mx, session.ip]
    for row in entry["failures"]:
        if row[:4] == key:
            row[4] += 1
            return
    if len(entry["failures"]) < MAX_FAILURE_ROWS:
        entry["failures"].append([*key, 1])
    else:  # beyond the cap: counted in the summary under the last row
        entry["failures"][-1][4] += 1


def rua(texts: list[str]) -> tuple[str, ...]:
    """The `rua` addresses of a domain's `_smtp._tls` TXT records (RFC 8460 §3), or ()
    when there is not exactly one TLSRPTv1 record."""
    found = [text for text in texts if re.match(r"v=TLSRPTv1\s*(;|$)", text)]
    if len(found) != 1:
        return ()
    for part in found[0].split(";"):
        key, _, value = part.partition("=")
        if key.strip() == "rua":
            return tuple(
                where.strip()
                for where in value.split(",")
                if where.strip().startswith(("mailto:", "https:"))
            )
    return ()


def report(
    day: str, domain: str, entry: dict[str, Any], organization: str, contact: str, report_id: str
) -> dict[str, Any]:
    """The report (RFC 8460 §4) of one policy domain for one day."""
    failures = [row for row in entry.get("failures", []) if isinstance(row, list) and len(row) == 5]
    policy: dict[str, Any] = {
        "policy-type": entry.get("policy-type", "no-policy-found"),
        "policy-domain": domain,
    }
    if entry.get("policy-string"):
        policy["policy-string"] = list(entry["policy-string"])
    if entry.get("mx-host"):
        policy["mx-host"] = list(entry["mx-host"])
    details = []
    for result, sending, mx, ip, sessions in failures:
        detail: dict[str, Any] = {"result-type": result, "failed-session-count": sessions}
        for key, value in (("sending-mta-ip", sending), ("receiving-mx-hostname", mx)):
            if value:
                detail[key] = value
        if ip:
            detail["receiving-ip"] = ip
        details.append(detail)
    summary = {
        "total-successful-session-count": int(entry.get("success", 0)),
        "total-failure-session-count": sum(int(row[4]) for row in failures),
    }
    made: dict[str, Any] = {"policy": policy, "summary": summary}
    if details:
        made["failure-details"] = details
    return {
        "organization-name": organization,
        "date-range": {
            "start-datetime": f"{day}T00:00:00Z",
            "end-datetime": f"{day}T23:59:59Z",
        },
        "contact-info": contact,
        "report-id": report_id,
        "policies": [made],
    }


def message(
    document: dict[str, Any], submitter: str, sender: str, to: str, now: float
) -> tuple[bytes, bytes]:
    """The report as a message to a `mailto:` rua (RFC 8460 §5.3), and the gzip
    attachment alone (what an `https:` rua is sent)."""
    domain = document["policies"][0]["policy"]["policy-domain"]
    start = document["date-range"]["start-datetime"]
    day = datetime.datetime.strptime(start, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    begin, end = int(day.timestamp()), int(day.timestamp()) + 86399
    ident = document["report-id"]
    payload = gzip.compress(json.dumps(document, indent=1).encode(), mtime=0)
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = to
    mail["Subject"] = f"Report Domain: {domain} Submitter: {submitter} Report-ID: <{ident}>"
    mail["Date"] = format_datetime(datetime.datetime.fromtimestamp(now, datetime.UTC))
    mail["Message-ID"] = make_msgid(domain=submitter)
    mail["TLS-Report-Domain"] = domain
    mail["TLS-Report-Submitter"] = submitter
    mail["Auto-Submitted"] = "auto-generated"
    mail.set_content(
        f"This is an aggregate TLS report (RFC 8460) from {submitter} for {domain},\n"
        f"for {start[:10]} (UTC).\n"
    )
    mail.add_attachment(
        payload,
        maintype=MEDIA_TYPE[0],
        subtype=MEDIA_TYPE[1],
        filename=f"{submitter}!{domain}!{begin}!{end}!{ident}.json.gz",
    )
    mail.set_type("multipart/report")  # keeps the boundary
    mail.set_param("report-type", "tlsrpt")
    # headers unfolded up to RFC 5322's limit: a folded Subject would gain a leading space
    wire = mail.policy.clone(linesep="\r\n", max_line_length=998)
    return mail.as_bytes(policy=wire), payload


def due(counts: Counts, today: str) -> list[str]:
    """The days whose counts are complete (before `today`) and not yet reported."""
    return sorted(day for day in counts if day < today)
