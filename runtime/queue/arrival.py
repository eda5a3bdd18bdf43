"""A message at the end of DATA, as the SMTP wing hands it to the queue.

It carries what was decided while it arrived: the plan it was accepted under (its
digest and router) and the routing of each recipient, decided at RCPT. Queue
processing uses those routings instead of routing again, so a recipient is routed once
per message; only a recipient that the server rules added (or a message read back from
the queue after a restart or a failure) is routed when it is processed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from mailplan.runtime.decide.router import Router, Routing
from mailplan.runtime.rules.engine import Headers
from mailplan.runtime.store.spool import Envelope


@dataclass(frozen=True)
class Arrival:
    envelope: Envelope
    message: bytes
    digest: str  # of the plan it was accepted under
    router: Router  # that plan's router
    routings: Mapping[str, Routing] = field(default_factory=dict)  # by recipient, from RCPT
    # the header block of `message`, when the SMTP wing parsed it (for the server rules):
    # the domain and account rules use it, and what it computed, rather than parse again
    headers: Headers | None = field(default=None, compare=False)

    def routing(self, recipient: str) -> Routing:
        """The recipient's routing: the one RCPT decided, or the plan's now."""
        found = self.routings.get(recipient)
        return found if found is not None else self.router.route(recipient)
