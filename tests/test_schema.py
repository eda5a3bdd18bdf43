"""The schema pass, through compile_site: every MP103 points at the key or value that is
wrong, with the exact wording, and all of them are reported in one run."""

from __future__ import annotations

from pathlib import Path

from mailplan.compiler.diagnostics import Diagnostic, error, has_errors
from mailplan.compiler.pipeline import compile_site
from mailplan.compiler.schema import site_schema

SITES = Path(__file__).parent.parent / "sites"

HEAD = "server:\n  hostname: mail.example.com\n  main_domain: example.com\n"  # lines 1-3
DOMAINS = "domains:\n  example.com:\n"

TOP_KEYS = ", ".join(sorted(site_schema()["properties"]))
SERVER_KEYS = "addresses, blacklisted_ips, client_ips, group, hostname, main_domain, user"
DOMAIN_KEYS = (
    "accounts, aliases, delivery, dkim, dmarc, forwarders, lists, mta_sts, mx, rules, "
    "sends_mail, spf, tls_rpt, unknown"
)
SCOPES = "everybody, clients-only, everybody-except-clients, nobody"
DURATION = "not a duration (seconds, or a number followed by s, m, h, d or w)"
SIZE = "not a size (bytes, or a number followed by K, M or G)"
PASSWORD = "password must be an argon2id hash ($argon2id$v=19$...): make one with `mailplan passwd`"
HASH = (
    "$argon2id$v=19$m=65536,t=3,p=4$mHbDVN+8ntu+AGLp5vPPHg$"
    "aIOC/cBUoBrmaVU6APmjLQOd9cAit2Uz39HgmwugLGg"
)


def mp103(line: int, column: int, message: str) -> Diagnostic:
    return error("site.yaml", line, column, "MP103", message)


def schema_errors(tmp_path: Path, text: str) -> list[Diagnostic]:
    (tmp_path / "site.yaml").write_text(text, encoding="utf-8")
    unit = compile_site(tmp_path)
    return sorted(d for d in unit.diagnostics if d.code == "MP103")


def test_a_minimal_site_has_no_schema_errors(tmp_path: Path) -> None:
    (tmp_path / "site.yaml").write_text(HEAD + DOMAINS, encoding="utf-8")
    unit = compile_site(tmp_path)
    assert not has_errors(unit.diagnostics), unit.diagnostics
    assert unit.plan is not None


def test_the_example_site_compiles_without_errors() -> None:
    unit = compile_site(SITES / "example.com")
    assert [d for d in unit.diagnostics if d.severity == "error"] == []
    assert unit.plan is not None


# --- unknown keys ---------------------------------------------------------------------


def test_unknown_top_level_key(tmp_path: Path) -> None:
    text = HEAD + DOMAINS + "extra: 1\n"
    assert schema_errors(tmp_path, text) == [
        mp103(6, 1, f"site: unknown key 'extra' (expected one of: {TOP_KEYS})"),
    ]


def test_unknown_key_in_a_mapping(tmp_path: Path) -> None:
    text = HEAD + "  colour: blue\n" + DOMAINS
    assert schema_errors(tmp_path, text) == [
        mp103(4, 3, f"server: unknown key 'colour' (expected one of: {SERVER_KEYS})"),
    ]


def test_every_unknown_key_of_a_mapping_is_reported_at_its_key(tmp_path: Path) -> None:
    text = HEAD + "  colour: blue\n  flavour: sweet\n" + DOMAINS + "    colour: red\n"
    assert schema_errors(tmp_path, text) == [
        mp103(4, 3, f"server: unknown key 'colour' (expected one of: {SERVER_KEYS})"),
        mp103(5, 3, f"server: unknown key 'flavour' (expected one of: {SERVER_KEYS})"),
        mp103(8, 5, f"domains.example.com: unknown key 'colour' (expected one of: {DOMAIN_KEYS})"),
    ]


def test_unknown_key_in_a_flow_mapping(tmp_path: Path) -> None:
    text = HEAD + DOMAINS + "tls: {certificate: a.crt, kee: a.key}\n"
    assert schema_errors(tmp_path, text) == [
        mp103(6, 27, "tls: unknown key 'kee' (expected one of: certificate, key)"),
    ]


def test_unknown_key_in_a_list_item(tmp_path: Path) -> None:
    text = HEAD + DOMAINS + "tests:\n  - to: a@example.com\n    expect: discard\n    frm: x\n"
    assert schema_errors(tmp_path, text) == [
        mp103(
            9,
            5,
            "tests[0]: unknown key 'frm' "
            "(expected one of: actions, at, authenticated, client, dns, expect, from, headers, "
            "helo, kind, name, size, subject, tls, to)",
        ),
    ]


# --- missing keys ---------------------------------------------------------------------


def test_missing_required_key_points_at_the_mapping_key(tmp_path: Path) -> None:
    text = "server:\n  hostname: mail.example.com\n" + DOMAINS
    assert schema_errors(tmp_path, text) == [
        mp103(1, 1, "server: missing required key 'main_domain'"),
    ]


def test_every_missing_key_is_reported(tmp_path: Path) -> None:
    text = "# a site\nserver: {}\n"
    assert schema_errors(tmp_path, text) == [
        mp103(2, 1, "server: missing required key 'hostname'"),
        mp103(2, 1, "server: missing required key 'main_domain'"),
        mp103(2, 1, "site: missing required key 'domains'"),
    ]


def test_missing_required_keys_deeper(tmp_path: Path) -> None:
    text = HEAD + (
        "pipes:\n"  # 4
        "  p: {args: []}\n"  # 5
        "domains:\n"  # 6
        "  example.com:\n"  # 7
        "    lists:\n"  # 8
        "      staff:\n"  # 9
        "        owner: postmaster\n"  # 10
        "tests:\n"  # 11
        "  - {to: a@example.com}\n"  # 12
    )
    assert schema_errors(tmp_path, text) == [
        mp103(5, 3, "pipes.p: missing required key 'program'"),
        mp103(9, 7, "domains.example.com.lists.staff: missing required key 'members'"),
        mp103(12, 5, "tests[0]: missing required key 'expect'"),
    ]


# --- wrong types ----------------------------------------------------------------------


def test_wrong_types(tmp_path: Path) -> None:
    text = HEAD + (
        "listeners:\n"  # 4
        '  smtp: {port: "25"}\n'  # 5
        "relaying:\n"  # 6
        '  authenticated: "yes"\n'  # 7
        "limits:\n"  # 8
        "  max_recipients: 1.5\n"  # 9
        "domains:\n"  # 10
        "  example.com:\n"  # 11
        "    aliases: example.org\n"  # 12
        "    accounts:\n"  # 13
        "      alice: secret\n"  # 14
        "  example.net: [a]\n"  # 15
        "routing: 5\n"  # 16
    )
    assert schema_errors(tmp_path, text) == [
        mp103(5, 16, "listeners.smtp.port: expected a whole number"),
        mp103(7, 18, "relaying.authenticated: expected true or false"),
        mp103(9, 19, "limits.max_recipients: expected a whole number"),
        mp103(12, 14, "domains.example.com.aliases: expected a list"),
        mp103(14, 14, "domains.example.com.accounts.alice: expected a mapping or nothing"),
        mp103(15, 16, "domains.example.net: expected a mapping or nothing"),
        mp103(16, 10, "routing: expected a string"),
    ]


def test_the_site_must_be_a_mapping(tmp_path: Path) -> None:
    assert schema_errors(tmp_path, "- server\n") == [mp103(1, 1, "site: expected a mapping")]
    assert schema_errors(tmp_path, "") == [mp103(1, 1, "site: expected a mapping")]


def test_a_section_must_be_a_mapping(tmp_path: Path) -> None:
    text = "server: [mail.example.com]\n" + DOMAINS
    assert schema_errors(tmp_path, text) == [mp103(1, 9, "server: expected a mapping")]


# --- enums ----------------------------------------------------------------------------


def test_bad_enum_values(tmp_path: Path) -> None:
    text = HEAD + (
        "listeners:\n"  # 4
        "  smtp: {protocol: smtpx, tls: maybe}\n"  # 5
        "relaying:\n"  # 6
        "  scope: all\n"  # 7
        "receiving:\n"  # 8
        "  spf: {action: reject-all}\n"  # 9
        "domains:\n"  # 10
        "  example.com:\n"  # 11
        "    spf: {policy: +all}\n"  # 12
    )
    assert schema_errors(tmp_path, text) == [
        mp103(
            5,
            20,
            "listeners.smtp.protocol: 'smtpx' is not one of: "
            "smtp, submission, smtps, pop3, pop3s, imap, imaps",
        ),
        mp103(5, 32, "listeners.smtp.tls: 'maybe' is not one of: none, starttls, implicit"),
        mp103(7, 10, f"relaying.scope: 'all' is not one of: {SCOPES}"),
        mp103(
            9,
            17,
            "receiving.spf.action: 'reject-all' is not one of: "
            "reject-fail, reject-softfail, header",
        ),
        mp103(12, 19, "domains.example.com.spf.policy: '+all' is not one of: -all, ~all, ?all"),
    ]


def test_bad_enum_value_that_is_not_a_string(tmp_path: Path) -> None:
    text = HEAD + DOMAINS + "relaying:\n  scope: 5\nreceiving:\n  blacklisted_ips: true\n"
    assert schema_errors(tmp_path, text) == [
        mp103(7, 10, f"relaying.scope: 5 is not one of: {SCOPES}"),
        mp103(9, 20, f"receiving.blacklisted_ips: true is not one of: {SCOPES}"),
    ]


# --- custom messages (x-message) ------------------------------------------------------


def test_password_must_be_an_argon2id_hash(tmp_path: Path) -> None:
    text = (
        HEAD
        + DOMAINS
        + (
            "    accounts:\n"  # 6
            "      alice:\n"  # 7
            "        password: secret\n"  # 8
            '      bob: {password: "$argon2i$v=19$m=65536,t=3,p=4$abc$def"}\n'  # 9
            f"      carol: {{password: '{HASH}'}}\n"  # 10
            "      dave:\n"  # 11
        )
    )
    assert schema_errors(tmp_path, text) == [
        mp103(8, 19, f"domains.example.com.accounts.alice.password: {PASSWORD}"),
        mp103(9, 23, f"domains.example.com.accounts.bob.password: {PASSWORD}"),
    ]


def test_bad_durations_and_sizes(tmp_path: Path) -> None:
    text = (
        HEAD
        + DOMAINS
        + (
            "queue:\n"  # 6
            "  retry: [5m, 5x, 90]\n"  # 7
            "  give_up_after: soon\n"  # 8
            "  warn_after: -1\n"  # 9
            "receiving:\n"  # 10
            "  reverse_connect: {cache: 1h, timeout: 1.5s}\n"  # 11
            "limits:\n"  # 12
            "  max_message_size: 10T\n"  # 13
            "pipes:\n"  # 14
            "  p: {program: /bin/p, timeout: 5 m}\n"  # 15
        )
    )
    assert schema_errors(tmp_path, text) == [
        mp103(7, 15, f"queue.retry[1]: {DURATION}"),
        mp103(8, 18, f"queue.give_up_after: {DURATION}"),
        mp103(9, 15, f"queue.warn_after: {DURATION}"),
        mp103(11, 41, f"receiving.reverse_connect.timeout: {DURATION}"),
        mp103(13, 21, f"limits.max_message_size: {SIZE}"),
        mp103(15, 33, f"pipes.p.timeout: {DURATION}"),
    ]


def test_other_custom_messages(tmp_path: Path) -> None:
    text = (
        "server:\n"  # 1
        "  hostname: mail..example.com\n"  # 2
        "  main_domain: example.com\n"  # 3
        "  addresses: [192.0.2.10, localhost]\n"  # 4
        "  client_ips: 5\n"  # 5
        "pipes:\n"  # 6
        "  p: {program: bin/p}\n"  # 7
        "domains:\n"  # 8
        "  example.com:\n"  # 9
        "    unknown: bounce\n"  # 10
        "    lists:\n"  # 11
        "      staff: {owner: postmaster, members: [alice]}\n"  # 12
        "tests:\n"  # 13
        "  - {to: a@example.com, expect: deliver}\n"  # 14
    )
    assert schema_errors(tmp_path, text) == [
        mp103(2, 13, "server.hostname: not a valid host or domain name"),
        mp103(4, 27, "server.addresses[1]: not an IPv4 or IPv6 address"),
        mp103(
            5, 15, "server.client_ips: an address list is text (one entry per line) or {file: PATH}"
        ),
        mp103(
            7,
            16,
            "pipes.p.program: a pipe's program must be an absolute path "
            "(nothing is looked up in PATH)",
        ),
        mp103(
            10,
            14,
            "domains.example.com.unknown: unknown must be reject, discard or {route: ADDRESS}",
        ),
        mp103(
            12,
            44,
            "domains.example.com.lists.staff.members[0]: not a mail address (expected name@domain)",
        ),
        mp103(
            14,
            33,
            "tests[0].expect: expect is one of: local ACCOUNT, smtp QUEUE, pipe NAME, "
            "list LIST, discard, reject [CODE], rule NAME, no rule",
        ),
    ]


def test_limits_of_numbers_and_lengths(tmp_path: Path) -> None:
    text = (
        HEAD
        + DOMAINS
        + (
            "    mx:\n"  # 6
            "      - {host: mx.example.com, priority: 70000}\n"  # 7
            "listeners:\n"  # 8
            "  smtp: {port: 0}\n"  # 9
            "tls: {certificate: ''}\n"  # 10
        )
    )
    assert schema_errors(tmp_path, text) == [
        mp103(
            7, 42, "domains.example.com.mx[0].priority: 70000 is greater than the maximum of 65535"
        ),
        mp103(9, 16, "listeners.smtp.port: 0 is less than the minimum of 1"),
        mp103(10, 20, "tls.certificate: '' should be non-empty"),
    ]


# --- names of things (propertyNames) --------------------------------------------------


def test_bad_names_point_at_the_bad_key(tmp_path: Path) -> None:
    text = HEAD + (
        "domains:\n"  # 4
        "  example.com:\n"  # 5
        "    accounts:\n"  # 6
        "      alice:\n"  # 7
        '      "bad name!":\n'  # 8
        '  "bad domain":\n'  # 9
    )
    assert schema_errors(tmp_path, text) == [
        mp103(
            8,
            7,
            "domains.example.com.accounts: 'bad name!' is not a valid name: names use letters, "
            "digits and _ - . (not at the start or end), at most 128 characters",
        ),
        mp103(9, 3, "domains: 'bad domain' is not a valid name: not a valid host or domain name"),
    ]


# --- alternatives (anyOf) -------------------------------------------------------------


def test_alternatives_report_the_error_of_the_matching_alternative(tmp_path: Path) -> None:
    text = (
        HEAD
        + DOMAINS
        + (
            "receiving:\n"  # 6
            "  rbl:\n"  # 7
            "    zones:\n"  # 8
            '      - "bad zone"\n'  # 9
            "      - {zone: ok.example, weight: 0}\n"  # 10
            "      - {weight: 2}\n"  # 11
        )
    )
    assert schema_errors(tmp_path, text) == [
        mp103(9, 9, "receiving.rbl.zones[0]: not a valid host or domain name"),
        mp103(10, 36, "receiving.rbl.zones[1].weight: 0 is less than the minimum of 1"),
        mp103(11, 9, "receiving.rbl.zones[2]: missing required key 'zone'"),
    ]


def test_alternatives_that_are_fine(tmp_path: Path) -> None:
    text = (
        HEAD
        + DOMAINS
        + (
            "receiving:\n"
            "  rbl:\n"
            "    zones: [zen.example, {zone: bl.example, weight: 2}]\n"
            "queue:\n"
            "  retry: [60, 5m]\n"
            "limits: {max_message_size: 1000}\n"
        )
    )
    assert schema_errors(tmp_path, text) == []


# --- everything at once ---------------------------------------------------------------


def test_all_schema_errors_are_reported_in_one_run(tmp_path: Path) -> None:
    text = (
        "server:\n"  # 1
        "  hostname: mail.example.com\n"  # 2
        "  colour: blue\n"  # 3
        "listeners:\n"  # 4
        '  smtp: {port: "25", tls: maybe}\n'  # 5
        "relaying:\n"  # 6
        "  scope: all\n"  # 7
        "queue:\n"  # 8
        "  retry: [5m, 5x]\n"  # 9
        "domains:\n"  # 10
        "  example.com:\n"  # 11
        "    accounts:\n"  # 12
        "      alice: {password: secret}\n"  # 13
        "tests:\n"  # 14
        "  - {to: a@example.com}\n"  # 15
        "extra: 1\n"  # 16
    )
    (tmp_path / "site.yaml").write_text(text, encoding="utf-8")
    unit = compile_site(tmp_path)
    assert unit.plan is None
    assert sorted(unit.diagnostics) == [
        mp103(1, 1, "server: missing required key 'main_domain'"),
        mp103(3, 3, f"server: unknown key 'colour' (expected one of: {SERVER_KEYS})"),
        mp103(5, 16, "listeners.smtp.port: expected a whole number"),
        mp103(5, 27, "listeners.smtp.tls: 'maybe' is not one of: none, starttls, implicit"),
        mp103(7, 10, f"relaying.scope: 'all' is not one of: {SCOPES}"),
        mp103(9, 15, f"queue.retry[1]: {DURATION}"),
        mp103(13, 25, f"domains.example.com.accounts.alice.password: {PASSWORD}"),
        mp103(15, 5, "tests[0]: missing required key 'expect'"),
        mp103(16, 1, f"site: unknown key 'extra' (expected one of: {TOP_KEYS})"),
    ]


def test_duplicate_key_and_schema_errors_together(tmp_path: Path) -> None:
    text = HEAD + "  hostname: other.example.com\n" + DOMAINS + "relaying: {scope: all}\n"
    (tmp_path / "site.yaml").write_text(text, encoding="utf-8")
    unit = compile_site(tmp_path)
    assert sorted(unit.diagnostics) == [
        error("site.yaml", 4, 3, "MP102", "duplicate key 'hostname' (first written at line 2)"),
        mp103(7, 19, f"relaying.scope: 'all' is not one of: {SCOPES}"),
    ]


def test_a_yaml_syntax_error_stops_before_the_schema(tmp_path: Path) -> None:
    (tmp_path / "site.yaml").write_text(HEAD + "  bad: [\n" + DOMAINS, encoding="utf-8")
    unit = compile_site(tmp_path)
    assert [d.code for d in unit.diagnostics] == ["MP101"]
    assert unit.plan is None


def test_a_trailing_newline_does_not_slip_past_a_pattern(tmp_path: Path) -> None:
    """Python's `$` also matches before a final newline: every pattern ends `$(?!\\n)`,
    so "sales\\n" is no name (it would split a line of Dovecot's passwd-file)."""
    text = HEAD + DOMAINS + '    accounts:\n      bob:\n        aliases: ["sales\\n"]\n'
    assert schema_errors(tmp_path, text) == [
        mp103(
            8,
            19,
            "domains.example.com.accounts.bob.aliases[0]: names use letters, digits and "
            "_ - . (not at the start or end), at most 128 characters",
        ),
    ]


def test_whole_numbers_are_whole_and_bounded(tmp_path: Path) -> None:
    """`5.0` is no whole number (JSON Schema would take it); numbers have at most ten digits."""
    text = (
        HEAD
        + DOMAINS
        + (
            "queue:\n"  # 6
            "  give_up_after: 5.0\n"  # 7
            "  warn_after: 12345678901s\n"  # 8
            "  retry: [10000000000]\n"  # 9
            "limits:\n"  # 10
            "  max_message_size: 1024.0\n"  # 11
            "  max_recipients: 2.0\n"  # 12
            "tests:\n"  # 13
            "  - {name: t, from: a@example.org, to: b@example.com, expect: reject,"
            " size: 99999999999K}\n"  # 14
        )
    )
    assert schema_errors(tmp_path, text) == [
        mp103(7, 18, f"queue.give_up_after: {DURATION}"),
        mp103(8, 15, f"queue.warn_after: {DURATION}"),
        mp103(9, 11, f"queue.retry[0]: {DURATION}"),
        mp103(11, 21, f"limits.max_message_size: {SIZE}"),
        mp103(12, 19, "limits.max_recipients: expected a whole number"),
        mp103(14, 77, f"tests[0].size: {SIZE}"),
    ]


def test_a_date_is_a_string_to_the_schema(tmp_path: Path) -> None:
    text = HEAD + DOMAINS + "relaying: {scope: 2001-01-01}\n"
    assert schema_errors(tmp_path, text) == [
        mp103(6, 19, f"relaying.scope: '2001-01-01' is not one of: {SCOPES}")
    ]


def test_a_listener_named_as_its_protocol_in_any_case(tmp_path: Path) -> None:
    """Names are case-insensitive: `SMTP:` is an smtp listener, not one without a protocol."""
    text = HEAD + DOMAINS + "listeners:\n  SMTP: {port: 2525, tls: none, auth: none}\n"
    (tmp_path / "site.yaml").write_text(text, encoding="utf-8")
    unit = compile_site(tmp_path)
    assert unit.diagnostics == ()
    assert unit.plan is not None
    assert [(x.name, x.protocol) for x in unit.plan.listeners] == [("SMTP", "smtp")]
