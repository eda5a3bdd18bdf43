"""Mail loops made by rules end: a copy carries `Delivered-To` of the account whose
rules made it, and a message that has been through an account's rules is delivered
there without them."""

from __future__ import annotations

from pathlib import Path

from mailplan.compiler.pipeline import compile_site
from mailplan.runtime.decide.router import Router
from mailplan.runtime.queue.local import Effects
from mailplan.runtime.queue.processor import process
from mailplan.runtime.store.spool import Envelope, Spool, new_id

SITE = """\
server:
  hostname: mail.example.com
  main_domain: example.com
domains:
  example.com:
    accounts:
      alice: {rules: alice.rules}
      bob: {rules: bob.rules}
"""


def test_two_accounts_forwarding_to_each_other_end(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "site.yaml").write_text(SITE)
    (site / "alice.rules").write_text(
        'rule "to bob" priority 5\n  then Forward to bob@example.com\n'
    )
    (site / "bob.rules").write_text(
        'rule "to alice" priority 5\n  then Redirect to alice@example.com\n'
    )
    unit = compile_site(site)
    assert unit.plan is not None, unit.diagnostics
    router = Router(unit.plan)
    spool = Spool(tmp_path / "queue")
    mail = tmp_path / "mail"
    first = Envelope(
        new_id(),
        1.0,
        "sha256:x",
        "smtp",
        "192.0.2.1",
        "h",
        "none",
        "-",
        "carol@remote.test",
        ("alice@example.com",),
    )
    spool.store(first, b"Subject: ping\r\n\r\nping\r\n")
    pending, rounds = [first.id], 0
    while pending and rounds < 10:
        effects = Effects()
        for queue_id in pending:
            assert process(spool, queue_id, router, mail, effects=effects) == []
        pending, rounds = effects.created, rounds + 1
    assert pending == [], "the rules kept making copies"
    assert rounds == 3  # alice forwards, bob redirects back, alice gets it without rules
    inbox = sorted((mail / "example.com" / "alice" / "new").iterdir())
    assert len(inbox) == 1
    content = inbox[0].read_bytes()
    assert b"Delivered-To: alice@example.com" in content
    assert b"Delivered-To: bob@example.com" in content
    assert not (mail / "example.com" / "bob" / "new").exists()
    assert list(spool.directory.glob("*.msg")) == []
