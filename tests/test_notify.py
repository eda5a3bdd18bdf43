"""The systemd notify protocol, received on a real AF_UNIX datagram socket as systemd
would receive it: a path, or a name in the abstract namespace."""

from __future__ import annotations

import logging
import os
import socket
import struct
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailplan.runtime.serve import notify

Listener = tuple[socket.socket, str]


def _receiver(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)  # as systemd does
    sock.bind(address)
    sock.settimeout(5.0)
    return sock


@pytest.fixture
def path_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    # A short directory: a socket path has at most 107 bytes, and tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="mp-") as directory:
        path = str(Path(directory) / "notify")
        with _receiver(path) as sock:
            monkeypatch.setenv("NOTIFY_SOCKET", path)
            yield sock, path


@pytest.fixture
def abstract_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    name = f"mailplan-test-{os.getpid()}-{os.urandom(4).hex()}"
    with _receiver(b"\0" + name.encode()) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        yield sock, "@" + name


def _received(sock: socket.socket) -> list[str]:
    data, _, _, _ = sock.recvmsg(4096)
    return data.decode().split("\n")


def test_ready_on_a_socket_path(path_socket: Listener) -> None:
    sock, _ = path_socket
    assert notify.ready() is True
    assert _received(sock) == ["READY=1"]


def test_ready_on_an_abstract_name(abstract_socket: Listener) -> None:
    sock, _ = abstract_socket
    assert notify.ready("serving plan sha256:38aceb2b8223") is True
    assert _received(sock) == ["READY=1", "STATUS=serving plan sha256:38aceb2b8223"]


def test_the_sender_is_this_process(path_socket: Listener) -> None:
    """systemd takes the sender's pid from the credentials (NotifyAccess=main)."""
    sock, _ = path_socket
    notify.status("starting")
    size = struct.calcsize("3i")
    data, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(size))
    assert data == b"STATUS=starting"
    [(level, kind, credentials)] = ancillary
    assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS)
    pid, uid, _ = struct.unpack("3i", credentials[:size])
    assert (pid, uid) == (os.getpid(), os.getuid())


def test_reloading_carries_the_monotonic_time(abstract_socket: Listener) -> None:
    sock, _ = abstract_socket
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notify.reloading() is True
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    reloading, monotonic = _received(sock)
    assert reloading == "RELOADING=1"
    key, _, value = monotonic.partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_a_reload_ends_with_ready(path_socket: Listener) -> None:
    sock, _ = path_socket
    notify.reloading("reloading the site")
    notify.ready("serving plan sha256:0123")
    assert _received(sock)[::2] == ["RELOADING=1", "STATUS=reloading the site"]
    assert _received(sock) == ["READY=1", "STATUS=serving plan sha256:0123"]


def test_stopping_and_status(path_socket: Listener) -> None:
    sock, _ = path_socket
    notify.stopping("letting 3 DATA phases finish")
    notify.status("stopped")
    assert _received(sock) == ["STOPPING=1", "STATUS=letting 3 DATA phases finish"]
    assert _received(sock) == ["STATUS=stopped"]


def test_a_newline_in_a_status_does_not_start_a_field(path_socket: Listener) -> None:
    sock, _ = path_socket
    notify.status("reload refused:\nREADY=1")
    assert _received(sock) == ["STATUS=reload refused: READY=1"]


def test_nothing_is_sent_without_notify_socket(
    path_socket: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, _ = path_socket
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert notify.ready() is False
    assert notify.reloading() is False
    assert notify.stopping() is False
    assert notify.status("x") is False
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(4096)


def test_an_environment_may_be_given() -> None:
    assert notify.notify({"READY": "1"}, environ={}) is False
    assert notify.notify({"READY": "1"}, environ={"NOTIFY_SOCKET": ""}) is False


@pytest.mark.parametrize("value", ["vsock:2:1234", "relative/notify", "@"])
def test_an_address_it_cannot_use_is_a_warning(
    value: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", value)
    with caplog.at_level(logging.WARNING, logger="mailplan.notify"):
        assert notify.ready() is False
    assert caplog.messages == [
        f"NOTIFY_SOCKET={value}: not a socket path or @name; systemd is not told"
    ]


def test_a_socket_that_is_gone_is_a_warning_not_an_exception(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with tempfile.TemporaryDirectory(prefix="mp-") as directory:
        missing = str(Path(directory) / "notify")
        monkeypatch.setenv("NOTIFY_SOCKET", missing)
        with caplog.at_level(logging.WARNING, logger="mailplan.notify"):
            assert notify.ready() is False
    [line] = caplog.messages
    assert line.startswith(f"cannot notify systemd at {missing}: ")
    assert "No such file or directory" in line


def test_address() -> None:
    assert notify.address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify.address("@/org/freedesktop/systemd1/notify/42") == (
        b"\0/org/freedesktop/systemd1/notify/42"
    )
    assert notify.address("") is None


def test_message() -> None:
    assert notify.message({"READY": "1", "STATUS": "a\r\nb"}) == b"READY=1\nSTATUS=a b"


# -- the server speaks the protocol --------------------------------------------------------


def _message(sock: socket.socket) -> tuple[int, list[str]]:
    """The next message and the pid that sent it."""
    size = struct.calcsize("3i")
    data, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(size))
    [(_, _, credentials)] = ancillary
    return struct.unpack("3i", credentials[:size])[0], data.decode().split("\n")


@pytest.mark.parametrize("workers", ["1", "2"], ids=["one-process", "two-workers"])
def test_the_server_says_ready_reloading_and_stopping_from_its_main_process(
    path_socket: Listener, tmp_path: Path, workers: str
) -> None:
    from serverkit import MailServer, free_port
    from sitekit import plain, write_site

    sock, _ = path_socket
    port = free_port()
    site = write_site(tmp_path / "site", listeners={"smtp": plain(port)})
    with MailServer(site, tmp_path, [port], extra_arguments=["--workers", workers]) as server:
        assert server.process is not None
        main = server.process.pid
        sender, fields = _message(sock)
        assert (sender, fields[0]) == (main, "READY=1")
        if workers == "1":
            server.reload()
            sender, fields = _message(sock)
            assert (sender, fields[0]) == (main, "RELOADING=1")
            sender, fields = _message(sock)
            assert (sender, fields[0]) == (main, "READY=1")
        server.stop()
        sender, fields = _message(sock)
        assert (sender, fields) == (main, ["STOPPING=1"])
