"""The PIPE module: declared programs run with the message on standard input
(runtime/delivery/pipe.py)."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import pytest
import uvloop

from mailplan.plan.model import Pipe, Source
from mailplan.runtime.delivery import pipe

HERE = Source("site.yaml", 1, 1)
ENVELOPE = pipe.Handover(
    queue_id="Q1234",
    sender="alice@example.test",
    recipient="Report+Spam@example.test",
    client="127.0.0.5",
    helo="client.example.test",
    auth="alice",
)
MESSAGE = b"From: alice@example.test\r\nSubject: caf\xc3\xa9\r\n\r\nbody \xff\r\n"


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


def declared(program: str, args: tuple[str, ...] = (), timeout: int = 10) -> Pipe:
    return Pipe("report", HERE, program, args, timeout)


def run(
    declared_pipe: Pipe,
    message: bytes = MESSAGE,
    envelope: pipe.Handover = ENVELOPE,
    argv: list[str] | None = None,
) -> pipe.Result:
    command = argv if argv is not None else [declared_pipe.program, *declared_pipe.args]
    return asyncio.run(pipe.run(declared_pipe, command, envelope, message))


# --- the command line ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        pytest.param('"report"@pipe', ["/bin/report", "--learn"], id="no-route-args"),
        pytest.param(
            '"report spam bob@example.test"@pipe',
            ["/bin/report", "--learn", "spam", "bob@example.test"],
            id="route-args",
        ),
        pytest.param(
            "\"report 'two words' x\"@pipe",
            ["/bin/report", "--learn", "'two", "words'", "x"],
            id="route-args-split-at-spaces-only",
        ),
        pytest.param(
            '"report o\'neil@example.test"@pipe',
            ["/bin/report", "--learn", "o'neil@example.test"],
            id="apostrophe-in-a-local-part",
        ),
    ],
)
def test_arguments(target: str, expected: list[str]) -> None:
    assert pipe.arguments(target, declared("/bin/report", ("--learn",))) == expected


def test_arguments_never_go_through_a_shell(tmp_path: Path) -> None:
    program = script(tmp_path, "args", f'printf "%s\\n" "$@" > {tmp_path}/argv')
    target = '"report $(touch pwned) ;rm;"@pipe'
    command = pipe.arguments(target, declared(program, ("--site",)))
    result = run(declared(program, ("--site",)), argv=command)
    assert result.kind == "delivered"
    assert (tmp_path / "argv").read_text().splitlines() == ["--site", "$(touch", "pwned)", ";rm;"]
    assert not (tmp_path / "pwned").exists()
    assert not Path("/pwned").exists()


# --- exit status ----------------------------------------------------------------------------


def test_exit_zero_delivers_and_the_program_reads_the_message(tmp_path: Path) -> None:
    program = script(tmp_path, "ok", f"cat > {tmp_path}/got")
    result = run(declared(program))
    assert result == pipe.Result("delivered", "2.0.0", "pipe report: delivered")
    got = (tmp_path / "got").read_bytes()
    assert got == b"Return-Path: <alice@example.test>\r\n" + MESSAGE


def test_null_sender_gets_an_empty_return_path(tmp_path: Path) -> None:
    program = script(tmp_path, "ok", f"cat > {tmp_path}/got")
    bounce = pipe.Handover("Q1", "", "r@example.test", "127.0.0.1", "localhost", "")
    assert run(declared(program), envelope=bounce).kind == "delivered"
    assert (tmp_path / "got").read_bytes().startswith(b"Return-Path: <>\r\nFrom:")


def test_exit_75_is_temporary_with_its_output(tmp_path: Path) -> None:
    program = script(tmp_path, "busy", "cat >/dev/null\necho 'database locked' >&2\nexit 75")
    result = run(declared(program))
    assert result == pipe.Result(
        "temporary", "4.3.0", "pipe report: exit status 75: database locked"
    )


def test_other_exit_status_fails_with_stdout_and_stderr(tmp_path: Path) -> None:
    program = script(
        tmp_path, "fail", "cat >/dev/null\necho 'no such folder'\necho oops >&2\nexit 1"
    )
    result = run(declared(program))
    assert result == pipe.Result(
        "permanent", "5.3.0", "pipe report: exit status 1: no such folder\noops"
    )


def test_failure_without_output(tmp_path: Path) -> None:
    program = script(tmp_path, "quiet", "exit 3")
    assert run(declared(program)) == pipe.Result("permanent", "5.3.0", "pipe report: exit status 3")


def test_long_output_is_cut(tmp_path: Path) -> None:
    program = script(tmp_path, "chatty", "head -c 100000 /dev/zero | tr '\\0' x\nexit 1")
    result = run(declared(program))
    assert result.kind == "permanent"
    assert result.text == "pipe report: exit status 1: " + "x" * pipe.OUTPUT_LIMIT


def test_output_that_is_not_utf8_is_replaced(tmp_path: Path) -> None:
    program = script(tmp_path, "latin1", "printf 'caf\\351'\nexit 1")
    result = run(declared(program))
    assert result.text == "pipe report: exit status 1: caf\ufffd"


# --- programs that misbehave ------------------------------------------------------------------


def test_time_out_is_temporary_and_kills_the_program(tmp_path: Path) -> None:
    body = f"echo $$ > {tmp_path}/pid\nsleep 30 &\necho $! > {tmp_path}/child\nwait"
    program = script(tmp_path, "slow", body)
    result = run(declared(program, timeout=1))
    assert result == pipe.Result("temporary", "4.3.0", "pipe report: no answer in 1 s")
    shell = int((tmp_path / "pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(shell, 0)  # reaped by run()
    child = int((tmp_path / "child").read_text())
    assert wait_until_dead(child), "the program's child outlived the time-out"


def wait_until_dead(pid: int, patience: float = 5.0) -> bool:
    """Whether `pid` is gone or a zombie (its parent died; init reaps it when it will)."""
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return True
        if stat.rpartition(")")[2].split()[0] in ("Z", "X"):
            return True
        time.sleep(0.02)
    return False


def test_missing_program_is_temporary(tmp_path: Path) -> None:
    missing = str(tmp_path / "not-installed")
    result = run(declared(missing))
    assert result.kind == "temporary"
    assert result.status == "4.3.0"
    assert result.text.startswith(f"pipe report: cannot run {missing}: ")


def test_program_that_is_not_executable_is_temporary(tmp_path: Path) -> None:
    program = tmp_path / "plain"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o644)
    result = run(declared(str(program)))
    assert result.kind == "temporary"
    assert result.status == "4.3.0"


def test_program_that_does_not_read_its_input(tmp_path: Path) -> None:
    program = script(tmp_path, "deaf", "exit 0")
    big = MESSAGE + b"x" * 2_000_000 + b"\r\n"
    assert run(declared(program), message=big).kind == "delivered"


def test_program_that_does_not_read_its_input_and_fails(tmp_path: Path) -> None:
    program = script(tmp_path, "deaf", "echo refused\nexit 2")
    big = MESSAGE + b"x" * 2_000_000 + b"\r\n"
    result = run(declared(program), message=big)
    assert result == pipe.Result("permanent", "5.3.0", "pipe report: exit status 2: refused")


def test_program_that_does_not_read_its_input_under_uvloop(tmp_path: Path) -> None:
    """The server runs on uvloop, whose closed pipe raises RuntimeError, not BrokenPipeError,
    when the program has ended before its input is written (a busy loop makes that
    likely): it is judged by its exit status there too."""
    program = script(tmp_path, "deaf", "echo refused >&2\nexit 3")
    declared_pipe = declared(program)

    async def busy_loop() -> pipe.Result:
        async def hog() -> None:
            while True:
                time.sleep(0.02)  # the loop is busy, as a server's is: the program ends first
                await asyncio.sleep(0)

        hogging = asyncio.create_task(hog())
        try:
            return await pipe.run(declared_pipe, [program], ENVELOPE, MESSAGE)
        finally:
            hogging.cancel()

    for _ in range(5):
        result = uvloop.run(busy_loop())
        assert result == pipe.Result("permanent", "5.3.0", "pipe report: exit status 3: refused")


# --- what the program sees -----------------------------------------------------------------------


def test_environment_is_the_envelope_and_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILPLAN_SECRET", "do-not-leak")
    env = shutil.which("env") or "/usr/bin/env"
    program = script(
        tmp_path, "env", f"cat >/dev/null\n{env} > {tmp_path}/env\npwd > {tmp_path}/cwd"
    )
    assert run(declared(program)).kind == "delivered"
    lines = (tmp_path / "env").read_text().splitlines()
    seen = dict(line.split("=", 1) for line in lines)
    seen.pop("PWD", None)  # the shell sets these two itself
    seen.pop("SHLVL", None)
    seen.pop("_", None)
    assert seen == {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "SENDER": "alice@example.test",
        "RECIPIENT": "Report+Spam@example.test",
        "QUEUE_ID": "Q1234",
        "CLIENT_ADDRESS": "127.0.0.5",
        "CLIENT_HELO": "client.example.test",
        "AUTH_USER": "alice",
    }
    assert (tmp_path / "cwd").read_text() == "/\n"


def test_argv_from_site_and_route(tmp_path: Path) -> None:
    program = script(
        tmp_path, "args", f'cat >/dev/null\nprintf "%s\\n" "$0" "$@" > {tmp_path}/argv'
    )
    site = declared(program, ("--mode", "spam report"))
    command = pipe.arguments('"report bob@example.test a b"@pipe', site)
    assert run(site, argv=command).kind == "delivered"
    assert (tmp_path / "argv").read_text().splitlines() == [
        program,
        "--mode",
        "spam report",
        "bob@example.test",
        "a",
        "b",
    ]


def test_program_runs_in_its_own_session(tmp_path: Path) -> None:
    program = script(
        tmp_path, "sid", f"cat >/dev/null\ncut -d' ' -f6 /proc/$$/stat > {tmp_path}/sid"
    )
    assert run(declared(program)).kind == "delivered"
    assert int((tmp_path / "sid").read_text()) != os.getsid(0)
