"""`*` pictures (docs/router.md, "Left side" and "Right side").

`*` matches any run of characters, the empty run included; matching ignores case;
when several `*` could split a subject more than one way, each `*`, from the left,
takes as little as it can; captures keep the subject's spelling; substitution puts
the captures, in order, in place of the right side's `*`.
"""

from __future__ import annotations

import random
import re

import pytest

from mailplan.runtime.decide.picture import Picture, substitute


@pytest.mark.parametrize(
    ("picture", "subject", "captures"),
    [
        pytest.param("user@example.com", "user@example.com", (), id="literal"),
        pytest.param("user@example.com", "USER@Example.Com", (), id="literal-any-case"),
        pytest.param("*@example.com", "jane@example.com", ("jane",), id="local-part"),
        pytest.param("*@example.com", "@example.com", ("",), id="empty-run"),
        pytest.param("sales-*@example.com", "sales-eu@example.com", ("eu",), id="prefix-star"),
        pytest.param("sales-*@example.com", "sales-@example.com", ("",), id="prefix-star-empty"),
        pytest.param("*", "", ("",), id="star-matches-empty-subject"),
        pytest.param("*", "anything@at.all", ("anything@at.all",), id="star-matches-all"),
        pytest.param("*.example.com", "a.b.example.com", ("a.b",), id="subdomain"),
        pytest.param("*@*", "u@d.example", ("u", "d.example"), id="two-stars"),
        pytest.param("*@*", "a@b@c.example", ("a", "b@c.example"), id="first-star-least"),
        pytest.param("*.*", "a.b.c", ("a", "b.c"), id="dot-split-least-first"),
        pytest.param("*-*-*", "a-b-c-d", ("a", "b", "c-d"), id="three-stars-left-to-right"),
        pytest.param("*a*", "banana", ("b", "nana"), id="earliest-segment"),
        pytest.param("*aa*", "aaa", ("", "a"), id="overlapping-segment"),
        pytest.param("*ab*b", "abb", ("", ""), id="middle-and-last-meet"),
        pytest.param("a*a", "aa", ("",), id="ends-meet"),
        pytest.param("**", "abc", ("", "abc"), id="adjacent-stars"),
        pytest.param("x*y*z", "XaYbZ", ("a", "b"), id="case-insensitive-segments"),
        pytest.param("x*y*z", "xYyZz", ("", "yZ"), id="case-insensitive-least-first"),
        pytest.param(
            "Sales-*@Example.COM", "sales-Europe@example.com", ("Europe",), id="upper-picture"
        ),
        pytest.param("*@example.com", "MiXeD@EXAMPLE.COM", ("MiXeD",), id="capture-keeps-spelling"),
        pytest.param("*.lab.example", "Deep.Lab.lab.example", ("Deep.Lab",), id="segment-twice"),
        pytest.param("[192.0.2.1]", "[192.0.2.1]", (), id="ip-literal"),
    ],
)
def test_match(picture: str, subject: str, captures: tuple[str, ...]) -> None:
    assert Picture.of(picture).match(subject) == captures


@pytest.mark.parametrize(
    ("picture", "subject"),
    [
        pytest.param("user@example.com", "user@example.org", id="other-literal"),
        pytest.param("user@example.com", "user@example.com.", id="longer-literal"),
        pytest.param("*@example.com", "jane@example.org", id="other-domain"),
        pytest.param("*@example.com", "jane@sub.example.comx", id="suffix-not-at-end"),
        pytest.param("sales-*@example.com", "support@example.com", id="other-prefix"),
        pytest.param("*.example.com", "example.com", id="subdomain-needs-a-dot"),
        pytest.param("a*a", "a", id="ends-overlap"),
        pytest.param("ab*ba", "aba", id="ends-overlap-longer"),
        pytest.param("*ab*ba", "aba", id="middle-too-long"),
        pytest.param("*x*", "abc", id="missing-middle"),
        pytest.param("*-*-*", "a-b", id="too-few-separators"),
        pytest.param("", "a", id="empty-picture"),
    ],
)
def test_no_match(picture: str, subject: str) -> None:
    assert Picture.of(picture).match(subject) is None


def test_picture_is_lower_case_and_counts_stars() -> None:
    picture = Picture.of("Sales-*@*.Example.COM")
    assert picture.text == "sales-*@*.example.com"
    assert picture.stars == 2
    assert Picture.of("user@example.com").stars == 0


@pytest.mark.parametrize(
    ("template", "captures", "result"),
    [
        pytest.param("*@new.example", ("Jane",), "Jane@new.example", id="one-star"),
        pytest.param(
            "*-archive@*", ("dev", "ops.example"), "dev-archive@ops.example", id="two-in-order"
        ),
        pytest.param("*@*", ("b", "a"), "b@a", id="order-not-sorted"),
        pytest.param("*.*.*", ("a", "b", "c"), "a.b.c", id="three"),
        pytest.param("user@example.com", ("ignored",), "user@example.com", id="no-star"),
        pytest.param("*@x.example", (), "@x.example", id="missing-capture-is-empty"),
        pytest.param("*%*@*", ("a", "b"), "a%b@", id="fewer-captures-than-stars"),
        pytest.param("*@x.example", ("a", "b"), "a@x.example", id="extra-captures-unused"),
        pytest.param('"spam-report *"', ("Junk",), '"spam-report Junk"', id="pipe-arguments"),
    ],
)
def test_substitute(template: str, captures: tuple[str, ...], result: str) -> None:
    assert substitute(template, captures) == result


def test_match_then_substitute_round_trip() -> None:
    captures = Picture.of("<*.*@swap.example>"[1:-1]).match("John.Doe@SWAP.example")
    assert captures == ("John", "Doe")
    assert substitute("*@*.example", captures) == "John@Doe.example"


def _reference(picture: str, subject: str) -> tuple[str, ...] | None:
    """Each `*` as a lazy group, tried from the left: the doc's rule, by the regex engine."""
    pattern = "(.*?)".join(re.escape(part) for part in picture.split("*"))
    found = re.fullmatch(pattern, subject, re.IGNORECASE | re.DOTALL)
    return None if found is None else found.groups()


@pytest.mark.parametrize("seed", [7, 8, 9])
def test_match_agrees_with_lazy_regex(seed: int) -> None:
    rng = random.Random(seed)
    alphabet = "aAb.-@"
    matched = 0
    for _ in range(3000):
        picture = "".join(rng.choice(alphabet + "**") for _ in range(rng.randint(0, 7)))
        if rng.random() < 0.7:
            # Build a subject the picture matches, so that most cases do match.
            subject = "".join(
                part
                if i == 0
                else "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 3))) + part
                for i, part in enumerate(picture.split("*"))
            )
            subject = "".join(c.upper() if rng.random() < 0.3 else c for c in subject)
        else:
            subject = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
        expected = _reference(picture, subject)
        assert Picture.of(picture).match(subject) == expected, (picture, subject)
        matched += expected is not None
    assert matched > 1500
