"""The LIST module's decisions: who may post, and what the members receive. Pure.

A post becomes a new message with the list's own return path (the owner), so that
bounces from members go to the owner and never to the poster, addressed to every
member, with `List-Id`, `List-Post` and `List-Unsubscribe` on top (RFC 2919, RFC
2369). A message that already carries this list's `List-Id` has come round a loop
and is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import SMTP
from email.utils import getaddresses

from mailplan.plan.model import MailingList


@dataclass(frozen=True)
class Expansion:
    sender: str
    recipients: tuple[str, ...]
    message: bytes


@dataclass(frozen=True)
class Refusal:
    status: str
    reason: str


def owner(mailing_list: MailingList, domain: str) -> str:
    return mailing_list.owner if "@" in mailing_list.owner else f"{mailing_list.owner}@{domain}"


def _identity(value: str) -> str:
    """The list identifier of a `List-Id` value: what stands between `<` and `>` (RFC 2919)."""
    start, end = value.rfind("<"), value.rfind(">")
    return value[start + 1 : end].strip().lower() if 0 <= start < end else value.strip().lower()


def list_id(mailing_list: MailingList, domain: str) -> str:
    return f"{mailing_list.name}.{domain}"


def expand(
    mailing_list: MailingList, domain: str, sender: str, message: bytes
) -> Expansion | Refusal:
    """What posting `message` from `sender` to the list does."""
    address = f"{mailing_list.name}@{domain}"
    identity = list_id(mailing_list, domain)
    headers = BytesHeaderParser(policy=SMTP).parsebytes(message)
    seen = {_identity(str(value)) for value in headers.get_all("List-Id", [])}
    if identity in seen:
        return Refusal("5.4.6", f"mail loop: the message has been through list {address}")
    if not sender:
        return Refusal("5.7.1", f"list {address} does not pass bounces on to its members")
    members = tuple(member.address for member in mailing_list.members)
    if mailing_list.posting == "moderated":
        return Refusal("5.7.1", f"list {address} is moderated: it takes no direct posts")
    if mailing_list.posting == "members":
        authors = {sender.lower()} | {
            found.lower() for _, found in getaddresses(headers.get_all("From", []))
        }
        if not authors & {member.lower() for member in members}:
            return Refusal("5.7.1", f"only members may post to list {address}")
    keeper = owner(mailing_list, domain)
    top = (
        f"List-Id: <{identity}>\r\n"
        f"List-Post: <mailto:{address}>\r\n"
        f"List-Unsubscribe: <mailto:{keeper}?subject=unsubscribe%20{address}>\r\n"
    )
    return Expansion(keeper, members, top.encode() + message)
