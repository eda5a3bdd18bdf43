"""The `mailplan` command: check, build, route, passwd and schema, as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from mailplan.cli import main
from mailplan.plan import codec
from tests.conftest import EXAMPLE, ROOT

SITES = ROOT / "tests" / "sites"


def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """The installed command, as a user (or CI) runs it, from the repository's root."""
    return subprocess.run(
        [sys.executable, "-m", "mailplan", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )


def test_check_example_site_is_ok() -> None:
    result = run("check", "sites/example.com")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[-2] == "configuration OK"
    assert lines[-1].startswith("plan digest sha256:")
    assert "warning MP304" in result.stdout  # the two Relay: records are named


def test_check_broken_site_fails_with_every_problem(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", str(SITES / "bad-relay-open")])
    out = capsys.readouterr().out
    assert code == 1
    assert out.startswith(f"{SITES / 'bad-relay-open'}/router.cgr:2:1: error MP303: open relay")
    assert out.splitlines()[-1] == "1 error, 0 warnings"
    assert "configuration OK" not in out


def test_check_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", str(SITES / "bad-relay-open"), "--format", "json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1
    assert report["ok"] is False and report["digest"] is None
    (only,) = report["diagnostics"]
    assert only["file"] == f"{SITES / 'bad-relay-open'}/router.cgr"
    assert (only["line"], only["column"], only["severity"], only["code"]) == (
        2,
        1,
        "error",
        "MP303",
    )


def test_check_json_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(EXAMPLE), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["digest"].startswith("sha256:")


def test_check_missing_site(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(
        f"{tmp_path}/site.yaml:1:1: error MP100: cannot read {tmp_path}/site.yaml: no such file"
    )


def test_build_writes_a_verified_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "plan.json"
    assert main(["build", str(EXAMPLE), "-o", str(target)]) == 0
    plan = codec.load(target)
    assert capsys.readouterr().out.strip() == f"wrote {target} ({codec.digest(plan)})"
    assert plan.server.main_domain == "example.com"


def test_build_refuses_a_broken_site(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "plan.json"
    assert main(["build", str(SITES / "bad-relay-open"), "-o", str(target)]) == 1
    assert "error MP303" in capsys.readouterr().err
    assert not target.exists()


def line_of(text: str) -> int:
    """The line of the example site.yaml where `text` ends (so edits elsewhere do not matter)."""
    content = (EXAMPLE / "site.yaml").read_text(encoding="utf-8")
    return content[: content.index(text) + len(text)].count("\n") + 1


def test_route_through_site_and_plan_agree(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["route", "info@example.org", "--site", str(EXAMPLE)]) == 0
    from_site = capsys.readouterr().out
    target = tmp_path / "plan.json"
    main(["build", str(EXAMPLE), "-o", str(target)])
    capsys.readouterr()
    assert main(["route", "info@example.org", "--plan", str(target)]) == 0
    assert capsys.readouterr().out == from_site
    alias, forwarder = line_of("\n  example.com:"), line_of("info: sales@example.net")
    assert from_site.splitlines() == [
        "info@example.org (mail)",
        f"  {'site.yaml:' + str(alias):<19}domain alias example.org of example.com: "
        "info@example.org -> info@example.com",
        f"  {'site.yaml:' + str(forwarder):<19}forwarder info@example.com = sales@example.net: "
        "info@example.com -> sales@example.net  [relay]",
        "  built-in           example.net is not hosted here: "
        "sales@example.net -> SMTP(example.net)sales@example.net",
        "module     SMTP",
        "queue      example.net",
        "address    sales@example.net",
        "relayable  yes",
    ]


def test_route_shows_the_routing_table_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["route", "carol@example.com", "--site", str(EXAMPLE)]) == 2
    assert capsys.readouterr().out.splitlines() == [
        "carol@example.com (mail)",
        '  router.cgr:9       `<carol@example.com> = error "carol has left; please write to '
        'info@example.com"`: carol@example.com -> ERROR 5.7.1 carol has left; please write to '
        "info@example.com",
        "module     ERROR",
        "reply      5.7.1 carol has left; please write to info@example.com",
        "relayable  no",
    ]


def test_route_access_kind(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["route", "support", "--kind", "access", "--site", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "router.cgr:15" in out and "queue      recipient@example.com" in out


def test_route_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["route", "rcpt@example.org", "--site", str(EXAMPLE), "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["module"], result["queue"], result["target"]) == (
        "LOCAL",
        "recipient@example.com",
        "recipient@example.com",
    )
    domain, account = line_of("\n  example.com:"), line_of("\n      recipient:")
    assert [step["source"]["line"] for step in result["steps"]] == [domain, account, account]


def test_route_json_prints_utf8(capsys: pytest.CaptureFixture[str]) -> None:
    """Non-ASCII stays as it is in the JSON, not a \\u escape."""
    command = ["route", "jörg@Bücher.example", "--site", str(EXAMPLE), "--format", "json"]
    assert main(command) == 0
    out = capsys.readouterr().out
    assert '"target": "jörg@xn--bcher-kva.example"' in out
    assert "\\u" not in out
    assert json.loads(out)["address"] == "jörg@Bücher.example"


def test_route_refuses_a_tampered_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "plan.json"
    main(["build", str(EXAMPLE), "-o", str(target)])
    target.write_text(target.read_text().replace('"clients-only"', '"everybody"'))
    assert main(["route", "x@example.com", "--plan", str(target)]) == 1
    assert "plan digest mismatch" in capsys.readouterr().err


def test_passwd_makes_an_argon2id_hash_that_verifies() -> None:
    result = run("passwd", "--stdin", stdin="correct horse\n")
    assert result.returncode == 0
    phc = result.stdout.strip()
    assert phc.startswith("$argon2id$v=19$")
    assert PasswordHasher().verify(phc, "correct horse")


def test_passwd_refuses_an_empty_password() -> None:
    result = run("passwd", "--stdin", stdin="\n")
    assert result.returncode == 1
    assert result.stderr.strip() == "mailplan: an empty password is not allowed"


def test_schema_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "site"]) == 0
    site = json.loads(capsys.readouterr().out)
    assert site["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert main(["schema", "plan"]) == 0
    assert json.loads(capsys.readouterr().out) == codec.json_schema()


def test_route_a_utf8_address(capsys: pytest.CaptureFixture[str]) -> None:
    """Any case, any Unicode normalisation, reaches the UTF-8 account."""
    assert main(["route", "JO\u0308RG@example.org", "--site", str(EXAMPLE)]) == 0
    alias, account = line_of("\n  example.com:"), line_of("\n      jörg:")
    assert capsys.readouterr().out.splitlines() == [
        "JO\u0308RG@example.org (mail)",
        f"  {'site.yaml:' + str(alias):<19}domain alias example.org of example.com: "
        "JÖRG@example.org -> JÖRG@example.com",
        f"  {'site.yaml:' + str(account):<19}account jörg@example.com: "
        "JÖRG@example.com -> LOCAL(jörg@example.com)jörg@example.com",
        "module     LOCAL",
        "queue      jörg@example.com",
        "address    jörg@example.com",
        "relayable  no",
    ]


def test_route_a_u_label_domain_in_a_labels(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["route", "jörg@Bücher.example", "--site", str(EXAMPLE)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-4:] == [
        "module     SMTP",
        "queue      xn--bcher-kva.example",
        "address    jörg@xn--bcher-kva.example",
        "relayable  no",
    ]


def test_route_a_bad_idn_domain(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["route", "jörg@bü_cher.example", "--site", str(EXAMPLE)]) == 2
    assert capsys.readouterr().out.splitlines()[-3:] == [
        "module     ERROR",
        "reply      5.1.3 not a valid internationalized domain name: bü_cher.example",
        "relayable  no",
    ]


def _broken(*args: object) -> None:
    raise RuntimeError("the compiler\nbroke")


def test_an_internal_error_is_one_line_and_exit_70(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("mailplan.commands.site.compile_site", _broken)
    assert main(["check", str(EXAMPLE)]) == 70
    captured = capsys.readouterr()
    assert captured.err == (
        "mailplan: internal error: RuntimeError: the compiler broke; "
        "please report it with this site\n"
    )


def test_debug_shows_the_traceback_of_an_internal_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("mailplan.commands.site.compile_site", _broken)
    assert main(["--debug", "check", str(EXAMPLE)]) == 70
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):\n")
    assert 'in _broken\n    raise RuntimeError("the compiler\\nbroke")' in err
    assert err.endswith("RuntimeError: the compiler broke; please report it with this site\n")


@pytest.mark.parametrize("flags", [["--debug", "serve"], ["serve", "--debug"]])
def test_serve_reports_an_internal_error_the_same_way(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], flags: list[str]
) -> None:
    monkeypatch.setattr("mailplan.commands.serve._start", _broken)
    assert main([*flags, str(EXAMPLE)]) == 70
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):\n")
    assert err.splitlines()[-1].endswith(
        "mailplan: internal error: RuntimeError: the compiler broke; "
        "please report it with this site"
    )
    assert main(["serve", str(EXAMPLE)]) == 70
    assert "Traceback" not in capsys.readouterr().err


def test_main_called_in_a_process_leaves_sigpipe_alone() -> None:
    """Only the program (`main()` reading sys.argv) lets SIGPIPE end it quietly, for
    `mailplan dns | head`; a caller's process (a test run) keeps its own disposition, or
    a write to a socket that closed would end the whole run."""
    before = signal.getsignal(signal.SIGPIPE)
    assert main(["schema", "site"]) == 0
    assert signal.getsignal(signal.SIGPIPE) == before
