"""The retry journal and its decisions: when to try again, warn, give up
(runtime/decide/retry.py)."""

from __future__ import annotations

import pytest

from mailplan.runtime.decide import retry

ARRIVED = 1_700_000_000.0
SCHEDULE = (300, 900, 3600, 14400)


def journal(*lines: str) -> str:
    return "".join(lines)


# --- the journal's lines ---------------------------------------------------------------


def test_failure_line_format() -> None:
    line = retry.failure_line(ARRIVED + 1.23456, "4.2.1", "bob@example.test", "451 mailbox busy")
    assert line == "T 1700000001.235 4.2.1 bob@example.test 451 mailbox busy\n"


def test_failure_line_puts_a_multiline_reason_on_one_line() -> None:
    line = retry.failure_line(ARRIVED, "4.0.0", "bob@example.test", "451-first\r\n451  second\n")
    assert line == "T 1700000000.000 4.0.0 bob@example.test 451-first 451 second\n"
    assert line.count("\n") == 1


@pytest.mark.parametrize(("kind", "expected"), [("W", "W 1700000000.500\n"), ("F", "F 12.000\n")])
def test_event_line_format(kind: str, expected: str) -> None:
    when = ARRIVED + 0.5 if kind == "W" else 12.0
    assert retry.event_line(kind, when) == expected


def test_empty_journal_is_a_fresh_history() -> None:
    history = retry.parse("")
    assert history == retry.History()
    assert history.attempts == {}
    assert not history.warned
    assert history.flushed == 0.0


def test_parse_counts_attempts_per_recipient_and_keeps_the_last() -> None:
    text = journal(
        retry.failure_line(ARRIVED + 10, "4.2.1", "bob@example.test", "451 busy"),
        retry.failure_line(ARRIVED + 20, "4.4.1", "carol@example.test", "connection refused"),
        retry.failure_line(ARRIVED + 330, "4.2.2", "bob@example.test", "452 mailbox full"),
    )
    history = retry.parse(text)
    assert history.attempts == {"bob@example.test": 2, "carol@example.test": 1}
    assert history.last == {"bob@example.test": ARRIVED + 330, "carol@example.test": ARRIVED + 20}
    assert history.reasons == {
        "bob@example.test": ("4.2.2", "452 mailbox full"),
        "carol@example.test": ("4.4.1", "connection refused"),
    }
    assert not history.warned
    assert history.flushed == 0.0


def test_parse_warning_and_latest_flush() -> None:
    text = journal(
        retry.failure_line(ARRIVED + 10, "4.2.1", "bob@example.test", "451 busy"),
        retry.event_line("F", ARRIVED + 500),
        retry.event_line("W", ARRIVED + 600),
        retry.event_line("F", ARRIVED + 200),
    )
    history = retry.parse(text)
    assert history.warned
    assert history.flushed == ARRIVED + 500


@pytest.mark.parametrize(
    "torn",
    [
        pytest.param("T", id="kind-only"),
        pytest.param("T 17000", id="time-only"),
        pytest.param("T 1700000000.000 4.2.1", id="no-recipient"),
        pytest.param("T 17000000", id="cut-in-time-without-newline"),
        pytest.param("W", id="warning-without-time"),
        pytest.param("garbage line", id="garbage"),
        pytest.param("T notatime 4.2.1 bob@example.test x", id="bad-time"),
    ],
)
def test_parse_skips_torn_or_broken_lines(torn: str) -> None:
    text = retry.failure_line(ARRIVED + 10, "4.2.1", "bob@example.test", "451 busy") + torn
    history = retry.parse(text)
    assert history.attempts == {"bob@example.test": 1}
    assert not history.warned


def test_parse_accepts_a_reason_that_is_empty() -> None:
    history = retry.parse("T 1700000000.000 4.4.1 bob@example.test\n")
    assert history.attempts == {"bob@example.test": 1}
    assert history.reasons["bob@example.test"] == ("4.4.1", "")


def test_round_trip_of_a_quoted_local_part_with_a_space() -> None:
    # RFC 5321 4.1.2: a quoted local part may contain a space; the server keeps such
    # addresses as the client gave them, so the journal must keep them whole.
    recipient = '"john smith"@example.test'
    text = retry.failure_line(ARRIVED + 10, "4.2.1", recipient, "451 busy")
    history = retry.parse(text)
    assert history.attempts == {recipient: 1}
    assert history.reasons[recipient] == ("4.2.1", "451 busy")


# --- when a recipient is due -----------------------------------------------------------


def test_fresh_recipient_is_due_on_arrival() -> None:
    history = retry.parse(retry.failure_line(ARRIVED + 10, "4.2.1", "other@example.test", "x"))
    assert retry.due(history, "bob@example.test", ARRIVED, SCHEDULE) == ARRIVED


@pytest.mark.parametrize(
    ("attempts", "interval"),
    [(1, 300), (2, 900), (3, 3600), (4, 14400), (5, 14400), (9, 14400)],
    ids=["first", "second", "third", "fourth", "last-repeats", "long-after"],
)
def test_due_follows_the_schedule_and_repeats_its_last_interval(
    attempts: int, interval: int
) -> None:
    lines = [
        retry.failure_line(ARRIVED + 100 * n, "4.2.1", "bob@example.test", "451 busy")
        for n in range(1, attempts + 1)
    ]
    history = retry.parse("".join(lines))
    last = ARRIVED + 100 * attempts
    assert retry.due(history, "bob@example.test", ARRIVED, SCHEDULE) == last + interval


def test_due_uses_the_schedule_it_is_given_not_the_one_of_the_failure() -> None:
    history = retry.parse(retry.failure_line(ARRIVED + 10, "4.2.1", "bob@example.test", "x"))
    assert retry.due(history, "bob@example.test", ARRIVED, (60,)) == ARRIVED + 70
    assert retry.due(history, "bob@example.test", ARRIVED, (7200, 60)) == ARRIVED + 7210


def test_due_with_an_empty_schedule_is_right_after_the_last_try() -> None:
    history = retry.parse(retry.failure_line(ARRIVED + 10, "4.2.1", "bob@example.test", "x"))
    assert retry.due(history, "bob@example.test", ARRIVED, ()) == ARRIVED + 10


def test_flush_after_the_last_failure_makes_the_recipient_due_at_the_flush() -> None:
    text = journal(
        retry.failure_line(ARRIVED + 10, "4.2.1", "bob@example.test", "x"),
        retry.event_line("F", ARRIVED + 20),
    )
    history = retry.parse(text)
    assert retry.due(history, "bob@example.test", ARRIVED, SCHEDULE) == ARRIVED + 20


def test_flush_before_the_last_failure_does_not_count() -> None:
    text = journal(
        retry.event_line("F", ARRIVED + 5),
        retry.failure_line(ARRIVED + 10, "4.2.1", "bob@example.test", "x"),
    )
    history = retry.parse(text)
    assert retry.due(history, "bob@example.test", ARRIVED, SCHEDULE) == ARRIVED + 310


def test_each_recipient_has_its_own_schedule() -> None:
    text = journal(
        retry.failure_line(ARRIVED + 10, "4.2.1", "bob@example.test", "x"),
        retry.failure_line(ARRIVED + 10, "4.2.1", "carol@example.test", "x"),
        retry.failure_line(ARRIVED + 400, "4.2.1", "carol@example.test", "x"),
    )
    history = retry.parse(text)
    assert retry.due(history, "bob@example.test", ARRIVED, SCHEDULE) == ARRIVED + 310
    assert retry.due(history, "carol@example.test", ARRIVED, SCHEDULE) == ARRIVED + 1300


# --- giving up and warning -------------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "expected"),
    [(0, False), (431_999, False), (432_000, True), (500_000, True)],
    ids=["just-arrived", "a-second-early", "exactly", "long-after"],
)
def test_expired(age: int, expected: bool) -> None:
    assert retry.expired(ARRIVED, ARRIVED + age, 432_000) is expected


@pytest.mark.parametrize(
    ("age", "expected"),
    [(0, False), (14_399, False), (14_400, True), (86_400, True)],
    ids=["just-arrived", "a-second-early", "exactly", "a-day-after"],
)
def test_should_warn_after_the_delay(age: int, expected: bool) -> None:
    history = retry.History()
    assert retry.should_warn(history, ARRIVED, ARRIVED + age, 14_400) is expected


def test_should_warn_only_once() -> None:
    history = retry.parse(retry.event_line("W", ARRIVED + 14_400))
    assert not retry.should_warn(history, ARRIVED, ARRIVED + 86_400, 14_400)


def test_warn_after_zero_means_never() -> None:
    assert not retry.should_warn(retry.History(), ARRIVED, ARRIVED + 10**7, 0)
