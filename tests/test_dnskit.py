"""The test DNS server itself: BIND on loopback answers from the zones it was given."""

from __future__ import annotations

from pathlib import Path

import dns.exception
import dns.resolver
import pytest
from dnskit import NameServer, Silent, zone_text


def test_named_serves_the_given_zone(tmp_path: Path) -> None:
    zone = zone_text("example.test", "@ IN MX 10 mx\nmx IN A 127.0.0.2\n")
    with NameServer(tmp_path, {"example.test": zone}) as server:
        resolver = server.resolver()
        assert [str(r) for r in resolver.resolve("example.test", "MX")] == ["10 mx.example.test."]
        assert [str(r) for r in resolver.resolve("mx.example.test", "A")] == ["127.0.0.2"]
        with pytest.raises(dns.resolver.NXDOMAIN):
            resolver.resolve("nothing.example.test", "A")


def test_silent_server_times_out() -> None:
    with Silent() as silent:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [silent.host]
        resolver.port = silent.port
        resolver.lifetime = 0.3
        with pytest.raises(dns.exception.Timeout):
            resolver.resolve("example.test", "A")
