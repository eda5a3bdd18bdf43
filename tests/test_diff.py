"""`mailplan diff`: pairs of sites, one per kind of change, with the exact lines each
gives, whether it is unsafe (exit 3) and `--git` against a repository made here."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from sitekit import listener, merged, write_site

from mailplan.cli import main
from mailplan.compiler.pipeline import compile_site
from mailplan.diff.compare import compare

# Two argon2id hashes from sites/example.com (the passwords are public examples).
HASH_A = (
    "$argon2id$v=19$m=65536,t=3,p=4$OwdAjGtfvrd4IzX77YHrUw"
    "$ODaMGmx8Vp5VqeZ7pw6oP4AI5DJiaNJX46RTpW+IQgc"
)
HASH_B = (
    "$argon2id$v=19$m=65536,t=3,p=4$VbqzSdYdkbC2PQVOEkAbYg"
    "$s0oI8I14zVeHVh96SDpmnuC5QkK0pA2NzqW54Su0V0Y"
)
DKIM_KEY = Path(__file__).parent.parent / "sites/example.com/dkim/ed2026.example.com.pub"
MX_10 = [{"host": "mx1.example.com", "priority": 10, "ipv4": ["192.0.2.10"]}]
OPEN_RELAY = (
    "Relay: *@partner.example = *%partner.example@[192.0.2.99]._via ; allow-open-relay: test\n"
)
BASE: dict[str, Any] = {
    "listeners": {
        "smtp": listener(2525, tls="starttls", auth="optional"),
        "submission": listener(2587, tls="starttls", auth="required"),
    },
    "tls": True,
    "accounts": {"alice": {"password": HASH_A}, "bob": {}},
    "extra": {"routing": "router.cgr"},
}


def site(folder: Path, settings: dict[str, Any], router: str = "") -> Path:
    """A site of BASE with `settings` merged over it (key by key) and its routing table."""
    rules = settings.get("_rules", "")
    write_site(folder, **merged(BASE, {k: v for k, v in settings.items() if k != "_rules"}))
    (folder / "router.cgr").write_text(router, encoding="utf-8")
    (folder / "domain.rules").write_text(rules, encoding="utf-8")
    shutil.copy(DKIM_KEY, folder / "k.pub")
    return folder


def domain(**settings: Any) -> dict[str, Any]:
    return {"domains": {"example.com": settings}}


RULE = (
    'rule "Spam to Junk" priority 7\n'
    '  if   Header Field is "X-Spam-Flag: YES*"\n'
    "  then Store in Junk\n"
)
# (id, old settings, old router, new settings, new router, group, lines of that group, exit)
CASES: list[tuple[str, dict[str, Any], str, dict[str, Any], str, str, list[str], int]] = [
    ("no-change", {}, "", {}, "", "domains", [], 0),
    (
        "client-ips-added",
        {},
        "",
        {"client_ips": ["127.0.0.1", "10.0.0.0-10.0.1.255"]},
        "",
        "server",
        ["client IPs: 10.0.0.0/23 added  [unsafe: widens who may relay]"],
        3,
    ),
    (
        "client-ips-removed",
        {},
        "",
        {"client_ips": []},
        "",
        "server",
        ["client IPs: 127.0.0.1/32 removed"],
        1,
    ),
    (
        "hostname-moves-the-mx",
        {},
        "",
        {"hostname": "mx.example.com"},
        "",
        "server",
        ["hostname: mail.example.com -> mx.example.com"],
        3,
    ),
    (
        "dane-turned-off",
        {},
        "",
        {"extra": {"outbound": {"tls": {"dane": False, "reports": False}}}},
        "",
        "server",
        [
            "outbound tls dane: True -> False  "
            "[unsafe: DANE TLSA records of other domains are no longer enforced]",
            "outbound tls reports: True -> False",
        ],
        3,
    ),
    (
        "domain-added",
        {},
        "",
        {"domains": {"other.example": {}}},
        "",
        "domains",
        ["domain other.example added"],
        1,
    ),
    (
        "domain-removed",
        {"domains": {"other.example": {}}},
        "",
        {},
        "",
        "domains",
        ["domain other.example removed  [unsafe: removes a domain]"],
        3,
    ),
    (
        "alias-removed",
        domain(aliases=["example.org"]),
        "",
        {},
        "",
        "domains",
        ["alias example.org of example.com removed  [unsafe: removes a domain]"],
        3,
    ),
    (
        "unknown-names",
        {},
        "",
        domain(unknown="discard"),
        "",
        "domains",
        ["unknown names of example.com: reject -> discard"],
        1,
    ),
    (
        "account-added",
        {},
        "",
        {"accounts": {"carol": {}}},
        "",
        "accounts",
        ["account carol@example.com added"],
        1,
    ),
    (
        "account-removed",
        {"accounts": {"carol": {}}},
        "",
        {},
        "",
        "accounts",
        ["account carol@example.com removed  [unsafe: removes an account]"],
        3,
    ),
    (
        "password-changed",
        {},
        "",
        {"accounts": {"alice": {"password": HASH_B}}},
        "",
        "accounts",
        ["account alice@example.com: password changed"],
        1,
    ),
    (
        "forwarder-changed",
        domain(forwarders={"info": "a@example.net", "old": "o@example.net"}),
        "",
        domain(forwarders={"info": "b@example.net", "new": "n@example.net"}),
        "",
        "forwarders",
        [
            "forwarder info@example.com: a@example.net -> b@example.net",
            "forwarder new@example.com -> n@example.net added",
            "forwarder old@example.com -> o@example.net removed",
        ],
        1,
    ),
    (
        "list-members",
        domain(lists={"staff": {"owner": "alice", "members": ["alice@example.com"]}}),
        "",
        domain(
            lists={"staff": {"owner": "alice", "members": ["bob@example.com"], "posting": "anyone"}}
        ),
        "",
        "lists",
        [
            "list staff@example.com: posting members -> anyone",
            "list staff@example.com: member alice@example.com removed",
            "list staff@example.com: member bob@example.com added",
        ],
        1,
    ),
    (
        "listener-port",
        {},
        "",
        {"listeners": {"smtp": {"port": 2526}}},
        "",
        "listeners",
        ["listener smtp: port 2525 -> 2526"],
        1,
    ),
    (
        "listener-tls-dropped",
        {},
        "",
        {"listeners": {"smtp": {"tls": "none", "plaintext_auth": True}}},
        "",
        "listeners",
        [
            "listener smtp: plaintext_auth no -> yes",
            "listener smtp: tls starttls -> none  [unsafe: drops TLS from a listener]",
        ],
        3,
    ),
    (
        "listener-auth-dropped",
        {},
        "",
        {"listeners": {"smtp": {"auth": "none"}}},
        "",
        "listeners",
        ["listener smtp: auth optional -> none  [unsafe: drops AUTH from a listener]"],
        3,
    ),
    (
        "relaying-widened",
        {},
        "",
        {"extra": {"relaying": {"scope": "everybody-except-clients"}}},
        "",
        "scopes",
        [
            "relaying scope: clients-only -> everybody-except-clients"
            "  [unsafe: widens who may relay]"
        ],
        3,
    ),
    (
        "relaying-narrowed",
        {},
        "",
        {"extra": {"relaying": {"scope": "nobody"}}},
        "",
        "scopes",
        ["relaying scope: clients-only -> nobody"],
        1,
    ),
    (
        "receiving-lowered",
        {},
        "",
        {"extra": {"receiving": {"spf": {"scope": "nobody"}}}},
        "",
        "scopes",
        [
            "receiving check spf scope: everybody-except-clients -> nobody"
            "  [unsafe: lowers a receiving check's scope]"
        ],
        3,
    ),
    (
        "receiving-raised",
        {"extra": {"receiving": {"spf": {"scope": "nobody"}}}},
        "",
        {},
        "",
        "scopes",
        ["receiving check spf scope: nobody -> everybody-except-clients"],
        1,
    ),
    (
        "dmarc-off",
        {},
        "",
        {"extra": {"receiving": {"dmarc": {"scope": "nobody", "action": "none"}}}},
        "",
        "scopes",
        [
            "receiving check dmarc scope: everybody-except-clients -> nobody"
            "  [unsafe: lowers a receiving check's scope]",
            "receiving check dmarc action: reject -> none",
        ],
        3,
    ),
    (
        "arc-sealing",
        {},
        "",
        {"extra": {"receiving": {"arc": {"seal": True}}}},
        "",
        "scopes",
        ["receiving check arc seal: False -> True"],
        1,
    ),
    (
        "limits",
        {},
        "",
        {"extra": {"limits": {"max_recipients": 10}}},
        "",
        "limits",
        ["limits.max_recipients: 1000 -> 10"],
        1,
    ),
    (
        "route-added",
        {},
        "",
        {},
        "<old@example.com> = alice@example.com\n",
        "routes",
        ["added router.cgr:1 `<old@example.com> = alice@example.com`"],
        1,
    ),
    (
        "route-removed-and-moved",
        {},
        "<a@example.com> = alice\n<b@example.com> = bob\n<c@example.com> = bob\n",
        {},
        "<b@example.com> = bob\n<a@example.com> = alice\n",
        "routes",
        [
            "removed router.cgr:3 `<c@example.com> = bob`",
            "moved router.cgr:2 -> router.cgr:1 `<b@example.com> = bob` (order changed)",
            "moved router.cgr:1 -> router.cgr:2 `<a@example.com> = alice` (order changed)",
        ],
        1,
    ),
    (
        "route-behaviour",
        {},
        "",
        {},
        "<old@example.com> = alice@example.com\n",
        "behaviour",
        [
            "`old@example.com` was rejected (5.1.1), is now delivered to account "
            "alice@example.com (router.cgr:1)",
            "logins as `old@example.com` now reach account `alice@example.com` (was none)",
        ],
        1,
    ),
    (
        "relay-opened",
        {},
        "",
        {},
        OPEN_RELAY,
        "behaviour",
        [
            "`*@partner.example` was relayed to partner.example for senders who may relay, "
            "is now relayed to [192.0.2.99] for any sender (router.cgr:1)"
            "  [unsafe: opens relaying for any sender]"
        ],
        3,
    ),
    (
        "login-changed",
        {},
        "",
        {},
        "Access:<alice@example.com> = bob@example.com\n",
        "behaviour",
        [
            "logins as `alice%example.com` now reach account `bob@example.com` "
            "(was `alice@example.com`)",
            "logins as `alice@example.com` now reach account `bob@example.com` "
            "(was `alice@example.com`)",
        ],
        1,
    ),
    (
        "rules",
        {**domain(rules="domain.rules"), "_rules": ""},
        "",
        {**domain(rules="domain.rules"), "_rules": RULE},
        "",
        "rules",
        ["rules of example.com: rule 'Spam to Junk' added (domain.rules:1)"],
        1,
    ),
    (
        "rules-changed",
        {**domain(rules="domain.rules"), "_rules": RULE},
        "",
        {**domain(rules="domain.rules"), "_rules": RULE.replace("7", "8")},
        "",
        "rules",
        ["rules of example.com: rule 'Spam to Junk' changed (domain.rules:1)"],
        1,
    ),
    (
        "pipes",
        {},
        "",
        {"extra": {"pipes": {"spam": {"program": "/bin/true", "args": ["-x"]}}}},
        "",
        "pipes",
        ["pipe spam added: /bin/true -x (timeout 60s)"],
        1,
    ),
    (
        "dmarc-changed",
        domain(dmarc={"policy": "reject"}),
        "",
        domain(dmarc={"policy": "none"}),
        "",
        "dns",
        [
            '_dmarc.example.com TXT (DMARC) changed: 3600 "v=DMARC1; p=reject" -> '
            '3600 "v=DMARC1; p=none"  [unsafe: deletes or changes DMARC records]'
        ],
        3,
    ),
    (
        "mx-changed",
        domain(mx=MX_10),
        "",
        domain(mx=[{**MX_10[0], "priority": 20}]),
        "",
        "dns",
        [
            "example.com MX changed: 3600 10 mx1.example.com. -> 3600 20 mx1.example.com."
            "  [unsafe: deletes or changes MX records]"
        ],
        3,
    ),
    (
        "spf-changed",
        {},
        "",
        domain(spf={"policy": "~all"}),
        "",
        "dns",
        [
            'example.com TXT (SPF) changed: 3600 "v=spf1 mx -all" -> 3600 "v=spf1 mx ~all"'
            "  [unsafe: deletes or changes SPF records]"
        ],
        3,
    ),
    (
        "dkim-removed",
        domain(dkim=[{"selector": "s1", "public_key": "k.pub"}]),
        "",
        {},
        "",
        "dns",
        [
            's1._domainkey.example.com TXT (DKIM) removed: 3600 "v=DKIM1; k=ed25519; '
            'p=UXH6x0ewKP8Zlu9W5spD85UdOife7lXQrwSIRAx5OU0="'
            "  [unsafe: deletes or changes DKIM records]"
        ],
        3,
    ),
    (
        "dkim-added",
        {},
        "",
        domain(dkim=[{"selector": "s1", "public_key": "k.pub"}]),
        "",
        "dns",
        [
            's1._domainkey.example.com TXT (DKIM) added: 3600 "v=DKIM1; k=ed25519; '
            'p=UXH6x0ewKP8Zlu9W5spD85UdOife7lXQrwSIRAx5OU0="'
        ],
        1,
    ),
]


def _pair(tmp_path: Path, case: tuple[Any, ...]) -> tuple[Path, Path]:
    _, old, old_router, new, new_router, *_ = case
    return site(tmp_path / "old", old, old_router), site(tmp_path / "new", new, new_router)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_each_kind_of_change_has_its_lines_and_exit_code(
    tmp_path: Path, case: tuple[Any, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = _pair(tmp_path, case)
    before, after = compile_site(old), compile_site(new)
    assert before.plan and after.plan, (before.diagnostics, after.diagnostics)
    changes = compare(before.plan, after.plan)
    group, lines, code = case[-3:]
    assert [c.line() for c in changes if c.group == group] == lines
    assert main(["diff", str(old), str(new)]) == code
    out = capsys.readouterr().out
    assert HASH_A not in out and HASH_B not in out
    unsafe = [line for line in out.splitlines() if line.startswith("UNSAFE ")]
    assert bool(unsafe) == (code == 3)
    if code == 3:
        assert main(["diff", str(old), str(new), "--allow-unsafe"]) == 1


def test_the_text_lists_unsafe_changes_first_then_the_groups(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = site(tmp_path / "old", {"accounts": {"carol": {}}})
    new = site(tmp_path / "new", {"extra": {"limits": {"max_recipients": 10}}})
    assert main(["diff", str(old), str(new)]) == 3
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [
        "UNSAFE accounts: account carol@example.com removed (removes an account)",
        "",
    ]
    assert lines[2:6] == [
        "accounts:",
        "  account carol@example.com removed  [unsafe: removes an account]",
        "limits:",
        "  limits.max_recipients: 1000 -> 10",
    ]
    assert lines[-3].startswith("digests:")
    assert lines[-1] == "5 changes, 1 unsafe"


def test_json_and_markdown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = site(tmp_path / "old", {"accounts": {"carol": {}}})
    new = site(tmp_path / "new", {})
    assert main(["diff", str(old), str(new), "--format", "json"]) == 3
    report = json.loads(capsys.readouterr().out)
    assert report["unsafe"] == 1 and report["exit"] == 3
    assert report["changes"][0] == {
        "group": "accounts",
        "text": "account carol@example.com removed",
        "unsafe": "removes an account",
    }
    assert main(["diff", str(old), str(new), "--format", "markdown"]) == 3
    markdown = capsys.readouterr().out
    assert "#### ⚠ Unsafe\n- **accounts**: account carol@example.com removed" in markdown
    assert "#### accounts\n- account carol@example.com removed\n" in markdown


def test_a_side_may_be_a_plan_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = site(tmp_path / "old", {})
    new = site(tmp_path / "new", {"accounts": {"carol": {}}})
    plan = tmp_path / "plan.json"
    assert main(["build", str(old), "-o", str(plan)]) == 0
    capsys.readouterr()
    assert main(["diff", str(plan), str(new)]) == 1
    assert "  account carol@example.com added" in capsys.readouterr().out
    assert main(["diff", str(plan), str(old)]) == 0
    assert capsys.readouterr().out == "no change\n"


def test_a_side_that_does_not_compile_exits_2_with_its_diagnostics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = site(tmp_path / "old", {})
    new = site(tmp_path / "new", {}, "this is no record\n")
    assert main(["diff", str(old), str(new)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"mailplan: {new} does not compile:\n{new}/router.cgr:1:" in captured.err
    assert main(["diff", str(tmp_path / "missing.json"), str(old)]) == 2


def _git(repository: Path, *words: str) -> None:
    subprocess.run(
        [
            "git",
            "-C",
            str(repository),
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            *words,
        ],
        check=True,
        capture_output=True,
    )


def test_git_compiles_the_site_at_a_revision_without_touching_the_work_tree(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repository = tmp_path / "repo"
    repository.mkdir()
    _git(repository, "init", "-q")
    folder = site(repository / "sites" / "example.com", {"accounts": {"carol": {}}})
    _git(repository, "add", ".")
    _git(repository, "commit", "-q", "-m", "first")
    site(folder, {"accounts": {"dave": {}}})  # uncommitted: carol goes, dave comes
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert main(["diff", "--git", "HEAD", str(folder)]) == 3
    out = capsys.readouterr().out
    assert "  account carol@example.com removed  [unsafe: removes an account]" in out
    assert "  account dave@example.com added" in out
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    _git(repository, "commit", "-q", "-am", "second")
    assert main(["diff", "--git", "HEAD", str(folder)]) == 0
    assert main(["diff", "--git", "HEAD~1", str(folder), "--allow-unsafe"]) == 1
    capsys.readouterr()
    assert main(["diff", "--git", "no-such-revision", str(folder)]) == 2
    assert "git archive" in capsys.readouterr().err
    assert main(["diff", "--git", "--", "--output=/tmp/x", str(folder)]) == 2
    assert main(["diff", "--git", "HEAD", str(tmp_path / "nothing")]) == 2
    assert "--git compares a site folder" in capsys.readouterr().err


def test_git_at_the_top_of_the_repository(tmp_path: Path) -> None:
    folder = site(tmp_path / "repo", {})
    _git(folder, "init", "-q")
    _git(folder, "add", ".")
    _git(folder, "commit", "-q", "-m", "first")
    assert main(["diff", "--git", "HEAD", str(folder)]) == 0


def test_networks_are_subtracted_and_shown_as_cidr() -> None:
    from mailplan.diff.server import minus
    from mailplan.plan.model import AddressList, Interval, Source

    def networks(*ranges: str) -> AddressList:
        v4 = tuple(Interval(*r.split("-")) for r in ranges if ":" not in r)
        v6 = tuple(Interval(*r.split("-")) for r in ranges if ":" in r)
        return AddressList("x", Source("site.yaml", 1, 1), v4, v6)

    wide = networks("10.0.0.0-10.0.3.255", "2001:db8::-2001:db8::ffff")
    narrow = networks("10.0.1.0-10.0.1.255")
    assert minus(wide, narrow) == ["10.0.0.0/24", "10.0.2.0/23", "2001:db8::/112"]
    assert minus(narrow, wide) == []
    assert minus(None, narrow) == []
    assert minus(narrow, None) == ["10.0.1.0/24"]


def test_markdown_escapes_markup_outside_code() -> None:
    from mailplan.diff.change import Change
    from mailplan.diff.render import markdown

    text = markdown([Change("dns", "_dmarc.x TXT added: `a_b*`", None)])
    assert "- \\_dmarc.x TXT added: `a_b*`" in text
