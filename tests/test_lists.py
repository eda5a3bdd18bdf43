"""Mailing-list posting policy and expansion (runtime/decide/lists.py)."""

from __future__ import annotations

import email
import email.policy

import pytest

from mailplan.plan.model import MailingList, Member, Source
from mailplan.runtime.decide import lists

HERE = Source("site.yaml", 1, 1)
DOMAIN = "example.test"
MEMBERS = ("alice@example.test", "Bob@Remote.test", "carol@elsewhere.test")

POST = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: staff@example.test\r\n"
    b"Subject: lunch\r\n"
    b"\r\n"
    b"Who is in?\r\n"
)


def staff(posting: str = "members", owner: str = "postmaster") -> MailingList:
    members = tuple(Member(address, HERE) for address in MEMBERS)
    return MailingList("staff", HERE, owner, members, posting)  # type: ignore[arg-type]


def headers_of(message: bytes) -> email.message.EmailMessage:
    parsed = email.message_from_bytes(message, policy=email.policy.default)
    assert isinstance(parsed, email.message.EmailMessage)
    return parsed


# --- owner and list id -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("owner", "expected"),
    [("postmaster", "postmaster@example.test"), ("boss@other.test", "boss@other.test")],
    ids=["local-name", "full-address"],
)
def test_owner(owner: str, expected: str) -> None:
    assert lists.owner(staff(owner=owner), DOMAIN) == expected


def test_list_id() -> None:
    assert lists.list_id(staff(), DOMAIN) == "staff.example.test"


# --- who may post ----------------------------------------------------------------------


def test_anyone_may_post_to_an_open_list() -> None:
    post = lists.expand(staff("anyone"), DOMAIN, "stranger@nowhere.test", POST)
    assert isinstance(post, lists.Expansion)
    assert post.recipients == MEMBERS


def test_member_may_post_by_envelope_sender() -> None:
    message = POST.replace(b"From: Alice <alice@example.test>", b"From: someone@nowhere.test")
    post = lists.expand(staff(), DOMAIN, "alice@example.test", message)
    assert isinstance(post, lists.Expansion)


def test_member_may_post_by_from_header() -> None:
    post = lists.expand(staff(), DOMAIN, "bounces+alice@mailer.test", POST)
    assert isinstance(post, lists.Expansion)


def test_membership_ignores_case() -> None:
    message = POST.replace(b"alice@example.test", b"someone@nowhere.test")
    post = lists.expand(staff(), DOMAIN, "BOB@remote.TEST", message)
    assert isinstance(post, lists.Expansion)


def test_stranger_may_not_post_to_a_members_list() -> None:
    message = POST.replace(b"alice@example.test", b"mallory@nowhere.test")
    post = lists.expand(staff(), DOMAIN, "mallory@nowhere.test", message)
    assert post == lists.Refusal("5.7.1", "only members may post to list staff@example.test")


def test_moderated_list_refuses_even_members() -> None:
    post = lists.expand(staff("moderated"), DOMAIN, "alice@example.test", POST)
    assert post == lists.Refusal(
        "5.7.1", "list staff@example.test is moderated: it takes no direct posts"
    )


# --- loops -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "list_id",
    [
        pytest.param(b"<staff.example.test>", id="bare"),
        pytest.param(b"Staff of the example <staff.example.test>", id="with-phrase"),
    ],
)
def test_a_post_that_has_been_through_this_list_is_a_loop(list_id: bytes) -> None:
    message = b"List-Id: " + list_id + b"\r\n" + POST
    post = lists.expand(staff("anyone"), DOMAIN, "alice@example.test", message)
    assert post == lists.Refusal(
        "5.4.6", "mail loop: the message has been through list staff@example.test"
    )


def test_loop_is_found_before_the_posting_policy() -> None:
    message = b"List-Id: <staff.example.test>\r\n" + POST
    post = lists.expand(staff("moderated"), DOMAIN, "mallory@nowhere.test", message)
    assert isinstance(post, lists.Refusal)
    assert post.status == "5.4.6"


def test_a_post_from_another_list_is_no_loop() -> None:
    message = b"List-Id: <news.example.test>\r\n" + POST
    post = lists.expand(staff("anyone"), DOMAIN, "news@example.test", message)
    assert isinstance(post, lists.Expansion)


def test_a_post_from_a_list_whose_id_ends_like_this_one_is_no_loop() -> None:
    # Nested lists: old-staff@example.test has staff@example.test as a member. Its
    # List-Id <old-staff.example.test> is another list (RFC 2919 compares whole ids).
    message = b"List-Id: <old-staff.example.test>\r\n" + POST
    post = lists.expand(staff("anyone"), DOMAIN, "old-staff@example.test", message)
    assert isinstance(post, lists.Expansion)


# --- what the members receive ----------------------------------------------------------


def test_expansion_goes_from_the_owner_to_every_member() -> None:
    post = lists.expand(staff(), DOMAIN, "alice@example.test", POST)
    assert isinstance(post, lists.Expansion)
    assert post.sender == "postmaster@example.test"
    assert post.recipients == MEMBERS


def test_expansion_uses_a_full_owner_address_as_it_is() -> None:
    post = lists.expand(staff(owner="boss@other.test"), DOMAIN, "alice@example.test", POST)
    assert isinstance(post, lists.Expansion)
    assert post.sender == "boss@other.test"


def test_expansion_adds_the_list_headers_on_top_and_keeps_the_post() -> None:
    post = lists.expand(staff(), DOMAIN, "alice@example.test", POST)
    assert isinstance(post, lists.Expansion)
    top = (
        b"List-Id: <staff.example.test>\r\n"
        b"List-Post: <mailto:staff@example.test>\r\n"
        b"List-Unsubscribe: <mailto:postmaster@example.test?subject=unsubscribe%20"
        b"staff@example.test>\r\n"
    )
    assert post.message == top + POST


def test_expansion_is_a_well_formed_message() -> None:
    post = lists.expand(staff(), DOMAIN, "alice@example.test", POST)
    assert isinstance(post, lists.Expansion)
    parsed = headers_of(post.message)
    assert parsed["List-Id"] == "<staff.example.test>"
    assert parsed["List-Post"] == "<mailto:staff@example.test>"
    assert parsed["Subject"] == "lunch"
    assert parsed.get_content() == "Who is in?\r\n"


def test_expansion_keeps_eight_bit_bytes() -> None:
    message = POST.replace(b"Subject: lunch", b"Subject: d\xc3\xa9jeuner") + b"caf\xc3\xa9\r\n"
    post = lists.expand(staff(), DOMAIN, "alice@example.test", message)
    assert isinstance(post, lists.Expansion)
    assert post.message.endswith(message)


def test_the_expansion_comes_back_as_a_loop() -> None:
    first = lists.expand(staff(), DOMAIN, "alice@example.test", POST)
    assert isinstance(first, lists.Expansion)
    again = lists.expand(staff(), DOMAIN, "alice@example.test", first.message)
    assert isinstance(again, lists.Refusal)
    assert again.status == "5.4.6"
