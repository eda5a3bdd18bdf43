"""What runtime/smtp/session.py takes from aiosmtpd beyond its public API.

`Session` extends aiosmtpd's `SMTP` where the protocol engine itself must change, and
for that it leans on names aiosmtpd does not promise to keep. pyproject.toml caps
aiosmtpd below its next minor release; this test fails loudly, naming the name, when an
aiosmtpd release that is allowed drops or changes one of them.
"""

from __future__ import annotations

import asyncio
import inspect

import aiosmtpd
import aiosmtpd.smtp as smtp
import pytest

# Methods of aiosmtpd.smtp.SMTP that Session overrides or calls, with their parameters.
METHODS = {
    "_handle_client": ["self"],
    "_getaddr": ["self", "arg"],
    "_create_session": ["self"],
    "_authenticate": ["self", "mechanism", "auth_data"],
    "_call_handler_hook": ["self", "command", "args"],
    "_set_post_data_state": ["self"],
    "handle_exception": ["self", "error"],
    "push": ["self", "status"],
    "check_helo_needed": ["self", "helo"],
    "check_auth_needed": ["self", "caller_method"],
    "smtp_DATA": ["self", "arg"],
    "smtp_AUTH": ["self", "arg"],
    "smtp_STARTTLS": ["self", "arg"],
    "challenge_auth": ["self", "challenge", "encode_to_b64", "log_client_response"],
    "auth_PLAIN": ["self", "_", "args"],
    "auth_LOGIN": ["self", "_", "args"],
}
# Attributes an SMTP instance has once it is made, or once a connection is made.
ATTRIBUTES = ("_auth_require_tls", "_tls_protocol", "session", "envelope", "transport")


def test_the_aiosmtpd_release_is_one_this_code_was_written_for() -> None:
    major, minor, *_ = (int(part) for part in aiosmtpd.__version__.split(".")[:3])
    assert (major, minor) == (1, 4), f"aiosmtpd {aiosmtpd.__version__}: check every name here"


@pytest.mark.parametrize("method", METHODS)
def test_each_private_method_is_there_with_its_parameters(method: str) -> None:
    found = getattr(smtp.SMTP, method, None)
    assert found is not None, f"aiosmtpd.smtp.SMTP.{method} is gone"
    parameters = list(inspect.signature(found).parameters)
    assert parameters[: len(METHODS[method])] == METHODS[method], (
        f"aiosmtpd.smtp.SMTP.{method}{inspect.signature(found)} changed"
    )


def test_the_marker_of_a_missing_auth_answer_is_there() -> None:
    assert isinstance(smtp.MISSING, smtp._Missing)


def test_an_instance_has_the_attributes_session_uses() -> None:
    async def made() -> smtp.SMTP:
        return smtp.SMTP(object())

    instance = asyncio.run(made())
    for attribute in ATTRIBUTES:
        assert hasattr(instance, attribute), f"aiosmtpd.smtp.SMTP().{attribute} is gone"


def test_the_session_keeps_its_login_data_where_session_reads_it() -> None:
    session = smtp.Session(asyncio.new_event_loop())
    try:
        assert "_login_data" in vars(session) or hasattr(session, "login_data")
        assert hasattr(session, "ssl") and hasattr(session, "host_name")
    finally:
        session.loop.close()


def test_the_stream_reader_keeps_its_buffer_and_limit() -> None:
    """`_read_data` reads DATA in large chunks through the reader's buffer and limit."""

    async def fields() -> tuple[bool, bool]:
        reader = asyncio.StreamReader(limit=1024)
        return hasattr(reader, "_buffer"), getattr(reader, "_limit", None) == 1024

    assert asyncio.run(fields()) == (True, True)
