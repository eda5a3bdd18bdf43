"""The PIPE module: run a program the site declares, the message on its standard input.

Only programs declared under `pipes:` run, directly (never through a shell), with
the declared arguments, then those the routing record gave. The envelope is in
the environment; nothing else of the server's environment is passed on. Exit
status 0 delivers, 75 (EX_TEMPFAIL), death by a signal and a time-out retry later,
anything else fails the recipient and the program's output goes into the bounce. A program that
cannot be started is a temporary failure: a broken installation must not bounce
mail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass

from mailplan.plan.model import Pipe

EX_TEMPFAIL = 75
OUTPUT_LIMIT = 4096
PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class Handover:
    queue_id: str
    sender: str
    recipient: str  # as the client gave it
    client: str
    helo: str
    auth: str


@dataclass(frozen=True)
class Result:
    kind: str  # delivered, temporary, permanent
    status: str
    text: str


def arguments(target: str, pipe: Pipe) -> list[str]:
    """The command line for a routing target `"name args"@pipe`: program, site args, route args."""
    inner = target.removesuffix("@pipe").strip('"')
    _, _, extra = inner.partition(" ")
    return [pipe.program, *pipe.args, *extra.split()]


def environment(envelope: Handover) -> dict[str, str]:
    return {
        "PATH": PATH,
        "LANG": "C.UTF-8",
        "SENDER": envelope.sender,
        "RECIPIENT": envelope.recipient,
        "QUEUE_ID": envelope.queue_id,
        "CLIENT_ADDRESS": envelope.client,
        "CLIENT_HELO": envelope.helo,
        "AUTH_USER": envelope.auth,
    }


async def run(pipe: Pipe, argv: list[str], envelope: Handover, message: bytes) -> Result:
    """Run the program with `message` (Return-Path added) on standard input."""
    content = f"Return-Path: <{envelope.sender}>\r\n".encode("utf-8", "surrogateescape") + message
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=environment(envelope),
            cwd="/",
            start_new_session=True,
        )
    except OSError as exc:
        return Result("temporary", "4.3.0", f"pipe {pipe.name}: cannot run {argv[0]}: {exc}")
    try:
        output = await asyncio.wait_for(_talk(process, content), pipe.timeout)
    except TimeoutError:
        _kill(process)
        await process.wait()
        return Result("temporary", "4.3.0", f"pipe {pipe.name}: no answer in {pipe.timeout} s")
    text = output[:OUTPUT_LIMIT].decode("utf-8", "replace").strip()
    said = f": {text}" if text else ""
    status = process.returncode if process.returncode is not None else -1
    if status == 0:
        return Result("delivered", "2.0.0", f"pipe {pipe.name}: delivered")
    if status < 0:
        return Result("temporary", "4.3.0", f"pipe {pipe.name}: killed by signal {-status}{said}")
    if status == EX_TEMPFAIL:
        return Result("temporary", "4.3.0", f"pipe {pipe.name}: exit status 75{said}")
    return Result("permanent", "5.3.0", f"pipe {pipe.name}: exit status {status}{said}")


async def _talk(process: asyncio.subprocess.Process, content: bytes) -> bytes:
    """Give the program its input while reading its output, then wait for it to end.

    A program may end without reading its input; what it made of it is its exit status.
    (`communicate` does not allow for that under uvloop, whose closed pipe raises
    RuntimeError rather than BrokenPipeError.)
    """
    assert process.stdin is not None and process.stdout is not None
    stdin = process.stdin

    async def feed() -> None:
        try:
            stdin.write(content)
            await stdin.drain()
        except (BrokenPipeError, ConnectionResetError, RuntimeError):
            pass  # it stopped reading
        finally:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError, RuntimeError):
                stdin.close()

    _, output = await asyncio.gather(feed(), process.stdout.read())
    await process.wait()
    return output


def _kill(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, 9)
