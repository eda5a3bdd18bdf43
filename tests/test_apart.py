"""Address lists compiled in a second process (`compiler.apart`): the same plan and the
same problems as compiled in line, a child that fails leaves the work to the parent, and
no child is forked beside other threads or for a small site."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mailplan.compiler import apart, yamlpos
from mailplan.compiler.diagnostics import ordered
from mailplan.compiler.parse import parse
from mailplan.compiler.pipeline import compile_site
from mailplan.compiler.unit import Unit
from mailplan.plan import codec

SITE = """\
server:
  hostname: mail.example.com
  main_domain: example.com
  client_ips: {{file: clients.txt}}
  blacklisted_ips: |
    #spammers
    203.0.113.0/24
address_lists:
  spammers: |
    198.51.100.7
{spammers}
domains:
  example.com:
    accounts:
      alice: {{}}
routing: router.cgr
"""
# Lines of a list that the compiler refuses: a bad address, host bits, a backwards range,
# an include of no list, a line that does not parse, and lists that include each other.
BROKEN = """\
    10.0.0.300
    198.51.101.0/23
    192.0.2.9-192.0.2.1
    #nowhere
    192.0.2.1 +
    #loopy
  loopy: |
    #spammers"""


def clients(count: int) -> str:
    """`count` lines of Client IPs: addresses, ranges, networks and `!` lines."""
    lines = []
    for i in range(count):
        block = f"10.{i // 256 % 256}.{i % 256}"
        lines.append(
            (f"{block}.7", f"{block}.10-{block}.99", f"{block}.0/24", f"!{block}.66")[i % 4]
        )
    return "\n".join(lines) + "\n"


def write(folder: Path, count: int, spammers: str = "    198.51.100.8") -> Path:
    folder.mkdir()
    (folder / "site.yaml").write_text(SITE.format(spammers=spammers))
    (folder / "clients.txt").write_text(clients(count))
    (folder / "router.cgr").write_text("<bob@example.com> = alice@example.com\n")
    return folder


@pytest.fixture
def alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in a command-line run, where no other thread runs: pytest may keep some."""
    monkeypatch.setattr(threading, "active_count", lambda: 1)


def both_ways(site: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Unit, Unit]:
    """The site compiled with its lists in a child, then in line."""
    monkeypatch.setattr(apart, "LINES", 1)
    forked = compile_site(site)
    monkeypatch.setattr(apart, "LINES", 10**9)
    return forked, compile_site(site)


@pytest.mark.usefixtures("alone")
def test_lists_compiled_apart_make_the_same_plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forked, inline = both_ways(write(tmp_path / "site", 1_000), monkeypatch)
    assert inline.plan is not None and forked.plan is not None
    assert codec.dumps(forked.plan) == codec.dumps(inline.plan)
    assert forked.diagnostics == inline.diagnostics == ()
    assert len(forked.plan.address_lists) == 3


@pytest.mark.usefixtures("alone")
def test_lists_compiled_apart_have_the_same_problems(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forked, inline = both_ways(write(tmp_path / "site", 1_000, BROKEN), monkeypatch)
    assert forked.plan is None and inline.plan is None
    assert ordered(forked.diagnostics) == ordered(inline.diagnostics)
    codes = sorted(d.code for d in inline.diagnostics)
    assert codes == ["MP105", "MP105", "MP106", "MP107", "MP108", "MP207"]


@pytest.mark.usefixtures("alone")
def test_the_parse_pass_leaves_big_lists_to_a_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = "address_lists:\n  x: |\n" + "".join(f"    192.0.2.{i}\n" for i in range(200))
    document, problems = yamlpos.load(text, "site.yaml")
    assert problems == []
    monkeypatch.setattr(apart, "LINES", 100)
    unit = parse(Unit(document, {"site.yaml": text}, ()))
    assert unit.lists == () and unit.lists_later is not None
    lists, trouble = unit.lists_later()
    assert trouble == []
    assert [(i.first, i.last) for i in lists[0].ipv4] == [("192.0.2.0", "192.0.2.199")]
    monkeypatch.setattr(apart, "LINES", 1_000)
    unit = parse(Unit(document, {"site.yaml": text}, ()))
    assert unit.lists_later is None and len(unit.lists[0].entries) == 200


@pytest.mark.usefixtures("alone")
def test_the_work_is_done_in_a_child() -> None:
    later = apart.begin(os.getpid, int, apart.LINES)
    assert later is not None
    assert later() != os.getpid()


@pytest.mark.usefixtures("alone")
def test_a_child_that_fails_leaves_the_work_to_the_parent(
    capfd: pytest.CaptureFixture[str],
) -> None:
    parent = os.getpid()

    def work() -> list[int]:
        if os.getpid() != parent:
            raise RuntimeError("only in the child")
        return [parent]

    later = apart.begin(work, list[int], apart.LINES)
    assert later is not None
    assert later() == [parent]
    assert capfd.readouterr().err == ""  # the child went quietly


def test_no_child_for_a_small_work_or_beside_other_threads() -> None:
    assert apart.begin(os.getpid, int, apart.LINES - 1) is None
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert apart.begin(os.getpid, int, apart.LINES) is None
    finally:
        stop.set()
        other.join()


@pytest.mark.parametrize("spammers", ["    198.51.100.8", BROKEN], ids=["good", "broken"])
def test_check_on_a_big_site_says_what_it_says_in_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spammers: str
) -> None:
    """`mailplan check`, a process of its own with lists past LINES (so compiled apart),
    reports what the compiler finds in line."""
    site = write(tmp_path / "site", apart.LINES + 1_000, spammers)
    command = [sys.executable, "-m", "mailplan", "check", str(site), "--format", "json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.stderr == ""
    report = json.loads(done.stdout)
    monkeypatch.setattr(apart, "LINES", 10**9)
    inline = compile_site(site)
    assert report["digest"] == (codec.digest(inline.plan) if inline.plan else None)
    found = [(d["line"], d["column"], d["code"]) for d in report["diagnostics"]]
    assert found == [(d.line, d.column, d.code) for d in ordered(inline.diagnostics)]
    assert done.returncode == (0 if inline.plan else 1)


@pytest.mark.usefixtures("alone")
def test_a_child_killed_in_the_middle_of_its_result_leaves_the_work_to_the_parent() -> None:
    parent = os.getpid()
    pid_file = Path(f"/tmp/apart-{parent}.pid")

    def work() -> bytes:
        if os.getpid() == parent:
            return b"here"
        pid_file.write_text(str(os.getpid()))
        return b"x" * 10_000_000  # more than a pipe holds: the child waits in its write

    later = apart.begin(work, bytes, apart.LINES)
    assert later is not None
    try:
        for _ in range(200):
            if pid_file.exists() and pid_file.read_text():
                break
            time.sleep(0.05)
        time.sleep(0.3)
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
        assert later() == b"here"
        assert later() == b"here"  # read once, then remembered
    finally:
        pid_file.unlink(missing_ok=True)


@pytest.mark.usefixtures("alone")
def test_the_parent_s_signal_handlers_are_not_the_child_s(tmp_path: Path) -> None:
    parent = os.getpid()
    heard = tmp_path / "heard"
    pid_file = tmp_path / "pid"

    def handler(number: int, frame: object) -> None:
        heard.write_text(str(os.getpid()))

    def work() -> int:
        if os.getpid() != parent:
            pid_file.write_text(str(os.getpid()))
            time.sleep(30)
        return os.getpid()

    before = signal.signal(signal.SIGTERM, handler)
    try:
        later = apart.begin(work, int, apart.LINES)
        assert later is not None
        for _ in range(200):
            if pid_file.exists() and pid_file.read_text():
                break
            time.sleep(0.05)
        os.kill(int(pid_file.read_text()), signal.SIGTERM)
        assert later() == parent  # the child ended without a result: done here
    finally:
        signal.signal(signal.SIGTERM, before)
    assert not heard.exists()


CHILD_OF_A_PARENT_THAT_GOES = """
import multiprocessing, os, time
from mailplan.compiler import apart
def work():
    time.sleep(0.5)
    return b"x" * 10_000_000  # more than a pipe holds
later = apart.begin(work, bytes, apart.LINES)
print(multiprocessing.active_children()[0].pid, flush=True)
os._exit(0)  # gone without reading
"""


def test_a_child_ends_when_its_parent_is_gone(tmp_path: Path) -> None:
    """Its write fails once nobody can read it: it does not wait, holding what it
    inherited (a server's queue lock), for a reader that will never come."""
    script = tmp_path / "parent.py"
    script.write_text(CHILD_OF_A_PARENT_THAT_GOES)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stderr == ""
    child = Path("/proc", done.stdout.strip())
    for _ in range(400):
        if _gone(child):
            break
        time.sleep(0.05)
    assert _gone(child)


def _gone(process: Path) -> bool:
    """Whether the process has ended (a zombie has: it waits only to be reaped)."""
    try:
        state = (process / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")
