"""compiler/check_rules.py: where rules stand, what they name, and whether they can fire."""

from __future__ import annotations

from pathlib import Path

from mailplan.compiler.pipeline import compile_site

SITE = """\
server:
  hostname: mail.example.com
  main_domain: example.com
pipes:
  report: {program: /usr/local/bin/report}
domains:
  example.com:
    rules: domain.rules
    accounts:
      alice:
        folders: [Archive, Lists/Work]
        rules: alice.rules
      bob:
        folders: [Archive]
"""


def _check(tmp_path: Path, files: dict[str, str], site: str = SITE) -> list[str]:
    (tmp_path / "site.yaml").write_text(site)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    unit = compile_site(tmp_path)
    return [f"{d.file}:{d.line} {d.code} {d.message}" for d in sorted(unit.diagnostics)]


def test_declared_folders_pipes_and_addresses_pass(tmp_path: Path) -> None:
    files = {
        "domain.rules": 'rule "Archive" priority 3\n  then Store in archive\n',
        "alice.rules": (
            'rule "Work" priority 5\n  then Store in Lists/Work\n  and Store in INBOX\n'
            "  and Mirror to bob@example.com, someone@elsewhere.test\n"
        ),
    }
    assert _check(tmp_path, files) == [
        "domain.rules:2 MP609 no such folder: archive in the domain example.com "
        "(alice, bob, postmaster): list it in the account's `folders:`"
    ]


def test_account_rules_may_not_execute_by_default(tmp_path: Path) -> None:
    files = {
        "domain.rules": 'rule "Report" priority 3\n  then Execute report\n',
        "alice.rules": 'rule "Mine" priority 5\n  then Execute report\n',
    }
    assert _check(tmp_path, files) == [
        "alice.rules:2 MP608 Execute is not allowed in account rules (account_rules.actions "
        "in site.yaml allows: Store in, Redirect to, Forward to, Mirror to, Reject with, "
        "Discard, Stop Processing, Mark, Add Header, Tag Subject, Reply with, "
        "Reply to All with, Remember 'From' in, Copy Attachments into)"
    ]


def test_the_site_can_allow_execute_to_accounts(tmp_path: Path) -> None:
    site = SITE + "account_rules:\n  actions: [Execute, Stop Processing]\n"
    files = {
        "domain.rules": 'rule "Report" priority 3\n  then Execute report\n',
        "alice.rules": 'rule "Mine" priority 5\n  then Execute "report --fast"\n',
    }
    assert _check(tmp_path, files, site) == []


def test_a_domain_rule_that_stops_shadows_the_account_rules_below_it(tmp_path: Path) -> None:
    files = {
        "domain.rules": 'rule "Everything stops" priority 5\n  then Stop Processing\n',
        "alice.rules": (
            'rule "Above" priority 6\n  then Mark Seen\n'
            'rule "Equal" priority 5\n  then Mark Flagged\n'
            'rule "Off" inactive\n  then Mark Draft\n'
        ),
    }
    assert _check(tmp_path, files) == [
        "alice.rules:3 MP612 rule 'Equal' can never fire: rule 'Everything stops' "
        "(domain.rules:1) fires on every message and ends processing before it"
    ]


def test_contradictions(tmp_path: Path) -> None:
    files = {
        "domain.rules": (
            'rule "Sizes" priority 5\n  if Message Size greater than 1K\n'
            "  and Message Size less than 1025\n  then Mark Seen\n"
            'rule "Senders" priority 5\n  if From is a@b.test\n  and From is c@d.test\n'
            "  then Mark Seen\n"
            'rule "Same" priority 5\n  if Subject is x\n  and Subject is not X\n  then Mark Seen\n'
            'rule "Fine" priority 5\n  if From is *@b.test\n  and From is a@*\n  then Mark Seen\n'
        ),
        "alice.rules": 'rule "x" priority 1\n  then Discard\n  and Mark Seen\n',
    }
    assert _check(tmp_path, files) == [
        "alice.rules:3 MP613 Mark is never carried out: Discard ends processing first",
        "domain.rules:1 MP612 rule 'Sizes' can never fire: `Message Size greater than 1K` "
        "and `Message Size less than 1025` leave nothing between them",
        "domain.rules:5 MP612 rule 'Senders' can never fire: `From is a@b.test` and "
        "`From is c@d.test` cannot both hold",
        "domain.rules:9 MP612 rule 'Same' can never fire: `Subject is x` and "
        "`Subject is not X` cannot both hold",
    ]
