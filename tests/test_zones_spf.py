"""SPF: the record built from the plan, the terms that cost a DNS look-up, and the
addresses the plan knows it authorises."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailplan.zones import spf
from mailplan.zones.records import zones
from tests.test_zones_records import plan_of


@pytest.mark.parametrize(
    ("terms", "costly"),
    [
        (("mx", "ip4:192.0.2.1", "-all"), ["mx"]),
        (
            ("a", "a:h.test", "a/24", "mx:m.test/24", "-all"),
            ["a", "a:h.test", "a/24", "mx:m.test/24"],
        ),
        (
            ("+include:x.test", "~exists:%{i}.x.test", "ptr", "ptr:p.test"),
            ["+include:x.test", "~exists:%{i}.x.test", "ptr", "ptr:p.test"],
        ),
        (("ip6:2001:db8::/32", "all", "redirect=_spf.x.test"), ["redirect=_spf.x.test"]),
        (("exp=explain.x.test", "?all"), []),
    ],
)
def test_terms_that_cost_a_look_up(terms: tuple[str, ...], costly: list[str]) -> None:
    assert spf.lookups(terms) == costly


def test_five_exchangers_and_the_addresses_the_record_authorises(tmp_path: Path) -> None:
    domain = (
        "mx:\n"
        + "".join(
            f"  - {{host: mx{n}.example.test, priority: {p}, ipv4: [192.0.2.{n}]}}\n"
            for n, p in ((1, 50), (2, 10), (3, 30), (4, 10), (5, 20))
        )
        + "spf: {ip4: [198.51.100.0/24], ip6: ['2001:db8:1::/48']}\n"
    )
    plan = plan_of(tmp_path, domain)
    (example,) = plan.domains
    assert spf.record(plan, example) == (
        "v=spf1 mx ip4:192.0.2.10 ip4:198.51.100.0/24 ip6:2001:db8::10 ip6:2001:db8:1::/48 -all"
    )
    assert spf.authorised(plan, example) == (
        "192.0.2.10",
        "2001:db8::10",
        "192.0.2.1",
        "192.0.2.2",
        "192.0.2.3",
        "192.0.2.4",
        "192.0.2.5",
        "198.51.100.0",
        "2001:db8:1::",
    )
    (zone,) = [z for z in zones(plan) if z.name == "example.test"]
    mx = [r.rdata() for r in zone.records if r.type == "MX"]
    assert mx == [  # lower value preferred: listed first
        "10 mx2.example.test.",
        "10 mx4.example.test.",
        "20 mx5.example.test.",
        "30 mx3.example.test.",
        "50 mx1.example.test.",
    ]
