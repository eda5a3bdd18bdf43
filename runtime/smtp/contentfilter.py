"""The content filter: rspamd asked at the end of DATA, before the 250.

The message goes to rspamd's HTTP `/checkv2` with its envelope facts as rspamd's
protocol names them (`Ip`, `Helo`, `From`, one `Rcpt` per recipient, `User` for an
authenticated client, `Queue-Id`, `MTA-Name`); what its answer means is
`runtime.decide.spam`'s. httpx speaks HTTP.

rspamd down, slow (past the site's `timeout`) or answering nonsense: the site's
`on_failure` decides, `tempfail` (the default: `451 4.7.1`, the client tries again)
or `accept` (the message goes on unchecked); the log says which, every time.
"""

from __future__ import annotations

import logging

import httpx

from mailplan.plan.model import ContentFilter
from mailplan.runtime.decide import replies, spam
from mailplan.runtime.decide.policy import Client, in_scope
from mailplan.runtime.store.spool import Envelope

log = logging.getLogger("mailplan.smtp")


class Rspamd:
    """rspamd as the site's `receiving.content_filter` names it."""

    def __init__(self, setting: ContentFilter, hostname: str) -> None:
        self.setting = setting
        self.hostname = hostname
        self.url = f"{setting.rspamd}/checkv2"

    def applies(self, client: Client) -> bool:
        return in_scope(self.setting.scope, client.trusted)

    async def check(
        self, client: Client, envelope: Envelope, message: bytes
    ) -> tuple[bytes, str | None]:
        """The message as it is accepted (rspamd's headers added), or the reply that
        refuses it."""
        try:
            verdict = await self._ask(client, envelope, message)
        except (httpx.HTTPError, ValueError, UnicodeError) as exc:
            why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if self.setting.on_failure == "accept":
                log.warning(
                    "%s: rspamd at %s failed (%s): accepted unchecked (on_failure: accept)",
                    envelope.id, self.url, why,
                )  # fmt: skip
                return message, None
            log.warning(
                "%s: rspamd at %s failed (%s): refused for now (on_failure: tempfail)",
                envelope.id, self.url, why,
            )  # fmt: skip
            return message, replies.FILTER_UNAVAILABLE
        log.info("%s: %s from %s", envelope.id, verdict.log(), client.ip)
        if verdict.reply is not None:
            return message, verdict.reply
        return spam.apply(message, verdict), None

    async def _ask(self, client: Client, envelope: Envelope, message: bytes) -> spam.SpamVerdict:
        headers = [
            (b"Ip", client.ip.encode()),
            (b"Helo", envelope.helo.encode("utf-8", "surrogateescape")),
            (b"From", envelope.sender.encode("utf-8", "surrogateescape")),
            (b"Queue-Id", envelope.id.encode()),
            (b"MTA-Name", self.hostname.encode()),
            *((b"Rcpt", rcpt.encode("utf-8", "surrogateescape")) for rcpt in envelope.recipients),
        ]
        if client.authenticated:
            headers.append((b"User", client.authenticated.encode("utf-8", "surrogateescape")))
        timeout = httpx.Timeout(self.setting.timeout)
        async with httpx.AsyncClient(timeout=timeout) as http:
            response = await http.post(self.url, content=message, headers=headers)
        response.raise_for_status()
        result = response.json()
        if not isinstance(result, dict):
            raise spam.Unreadable(f"rspamd answered {str(result)[:200]}")
        return spam.verdict(result)
