"""contrib/systemd: the unit and its unprivileged drop-in pass `systemd-analyze verify`.

verify checks every key and value, and that ExecStart's program exists, so the
copies verified here run this checkout's `mailplan` instead of /opt/mailplan's.
It reports unknown keys and bad values on standard error without failing, so
the test also asks that nothing it prints is about these files.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from interop import program

from tests.conftest import ROOT

CONTRIB = ROOT / "contrib" / "systemd"
UNIT = CONTRIB / "mailplan.service"
DROP_IN = CONTRIB / "mailplan-unprivileged.conf"
INSTALLED = "/opt/mailplan/bin/mailplan"


def _mailplan() -> Path:
    """This checkout's `mailplan` script, beside the Python that runs the tests."""
    script = Path(sys.executable).parent / "mailplan"
    assert script.exists(), f"no mailplan script beside {sys.executable}: pip install -e ."
    return script


def _copy(source: Path, target: Path, mailplan: Path) -> None:
    text = source.read_text()
    assert INSTALLED in text  # what the copy replaces
    target.write_text(text.replace(INSTALLED, str(mailplan)))


def _verify(unit: Path) -> list[str]:
    """What `systemd-analyze verify` says about the unit's folder; fails if it fails."""
    analyze = program("systemd-analyze")
    assert analyze is not None  # the interop marker saw to it
    done = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # Outside a systemd host it may say things about the host itself; those
    # are not about these files, and only those are let through.
    said = (done.stdout + done.stderr).splitlines()
    return [line for line in said if str(unit.parent) in line or "mailplan" in line]


@pytest.mark.interop("systemd-analyze")
def test_the_unit_verifies(tmp_path: Path) -> None:
    _copy(UNIT, tmp_path / "mailplan.service", _mailplan())
    assert _verify(tmp_path / "mailplan.service") == []


@pytest.mark.interop("systemd-analyze")
def test_the_unit_with_the_unprivileged_drop_in_verifies(tmp_path: Path) -> None:
    mailplan = _mailplan()
    _copy(UNIT, tmp_path / "mailplan.service", mailplan)
    (tmp_path / "mailplan.service.d").mkdir()
    _copy(DROP_IN, tmp_path / "mailplan.service.d" / "unprivileged.conf", mailplan)
    assert _verify(tmp_path / "mailplan.service") == []


@pytest.mark.interop("systemd-analyze")
def test_verify_does_read_the_drop_in(tmp_path: Path) -> None:
    """The test above proves something only if verify reads the drop-in it was given."""
    mailplan = _mailplan()
    _copy(UNIT, tmp_path / "mailplan.service", mailplan)
    (tmp_path / "mailplan.service.d").mkdir()
    drop_in = tmp_path / "mailplan.service.d" / "unprivileged.conf"
    _copy(DROP_IN, drop_in, mailplan)
    with drop_in.open("a") as text:
        text.write("NoSuchKey=yes\n")
    said = _verify(tmp_path / "mailplan.service")
    assert any("Unknown key 'NoSuchKey'" in line for line in said), said


def test_the_drop_in_runs_the_same_command_without_the_user_switch() -> None:
    def command(path: Path) -> str:
        lines = path.read_text().splitlines()
        return [line for line in lines if line.startswith("ExecStart=/")][-1]

    started_as_root = command(UNIT)
    assert " --user mailplan --group mailplan" in started_as_root
    assert command(DROP_IN) == started_as_root.replace(" --user mailplan --group mailplan", "")


def test_the_unit_writes_only_under_the_root_it_serves() -> None:
    text = UNIT.read_text()
    assert "ProtectSystem=strict\n" in text
    assert "ReadWritePaths=/var/lib/mailplan\n" in text
    assert "--root /var/lib/mailplan " in text
