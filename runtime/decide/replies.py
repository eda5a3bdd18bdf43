"""SMTP replies, with their enhanced status codes (RFC 3463), shared by the server and tests."""

from __future__ import annotations

GREETING_REFUSED = "554 5.7.1 Access denied: your address is blacklisted here"
SENDER_OK = "250 2.1.0 Sender OK"
RECIPIENT_OK = "250 2.1.5 Recipient OK"
QUEUED = "250 2.0.0 OK: queued as {id}"
RELAY_DENIED = "550 5.7.1 Relaying denied: <{address}> is not a local address"
REJECTED = "550 {status} <{address}>: {reason}"
BAD_SENDER_DOMAIN = "553 5.1.7 <{address}>: the sender's domain is missing"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients (at most {limit} in one message)"
TOO_BIG = "552 5.3.4 Message too big (at most {limit} bytes)"
BAD_HELO = "501 5.5.4 Syntax error: control characters in the host name"
BAD_ADDRESS = "501 5.1.3 Bad address syntax: <{address}>"
NOT_UTF8 = "501 5.5.2 Syntax error: the command is not valid UTF-8"
NEEDS_SMTPUTF8 = "553 5.6.7 A non-ASCII address needs the SMTPUTF8 parameter on MAIL FROM"
BAD_IDN = "553 5.1.3 <{address}>: the domain is not a valid internationalized domain name"
TOO_MANY_HOPS = "554 5.4.6 Too many hops: the message seems to be in a mail loop"
QUEUE_WRITE_FAILED = "451 4.3.0 The message could not be queued, please try again later"
# too much accepted mail waits to be processed (`runtime.queue.processor.HARD_LIMIT`)
QUEUE_FULL = "451 4.3.1 Mail system full, please try again later"
TLS_ACTIVE = "503 5.5.1 TLS is already active"  # a second STARTTLS (RFC 3207)
AUTH_LINE_TOO_LONG = "500 5.5.6 Authentication exchange line is too long"  # RFC 4954
CONNECTION_LOST = "421 4.4.2 Connection lost"  # what a session says to a client that went away
# Connections past a limit (`runtime.decide.admission`), said before the greeting
CLIENT_BUSY = "421 4.7.0 Too many connections from your address (at most {limit}), try again later"
SERVER_BUSY = "421 4.3.2 Too many connections (at most {limit}), try again later"


def reply(template: str, **values: object) -> str:
    return template.format(**values)


# The content filter (rspamd: runtime/decide/spam.py)
SPAM_REJECTED = "550 5.7.1 Message rejected as spam"
SPAM_TRY_LATER = "451 4.7.1 Try again later"
GREYLISTED = "451 4.7.1 Greylisted, please try again later"
FILTER_UNAVAILABLE = "451 4.7.1 The content filter is unavailable, please try again later"
