"""A real DNS server for tests, in this process: dnslib's `DNSServer` on a loopback port.

`NameServer(root, {"example.test": ZONE_TEXT}).start()` parses each zone with dnspython
and serves them, UDP and TCP on one port the kernel chose, from threads of this
process; no program has to be installed. It answers as an authoritative server without
recursion does (BIND, for one): records with the AA flag, NXDOMAIN and NODATA with the
zone's SOA, CNAME chains inside a zone, wildcards (RFC 4592), REFUSED for names outside
its zones, SERVFAIL for every name of a zone whose text does not load (as BIND does
with a broken zone file). Tests point dnspython at it with `resolver()`, or hand
`address` (`IP:PORT`) to the code under test. Zones named in `secure` are answered with
the AD bit (when the query asks with AD or DO), as a validating resolver on loopback
answers for a signed zone: that is how DANE tests reach their secure path. `Silent` is
a UDP and TCP port that reads queries and never answers, for time-out tests.
`namedkit.Named` is BIND itself, with the same interface, for the interop tests.
Nothing here reaches beyond loopback.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Collection, Mapping
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.node
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.rrset
import dns.zone
from dnslib import DNSRecord
from dnslib.server import DNSHandler, DNSLogger, DNSServer
from serverkit import LOOPBACK

CHAIN = 8  # CNAMEs followed inside a zone, at most


def zone_text(origin: str, records: str, ttl: int = 300) -> str:
    """A complete zone file for `origin` with an SOA and NS, then `records` (zone-file lines)."""
    origin = origin.rstrip(".") + "."
    return (
        f"$ORIGIN {origin}\n$TTL {ttl}\n"
        f"@ IN SOA ns.{origin} hostmaster.{origin} 1 3600 600 86400 300\n"
        f"@ IN NS ns.{origin}\nns IN A {LOOPBACK}\n{records}\n"
    )


class Zone:
    """One zone as dnspython parsed it, or the reason it did not load."""

    def __init__(self, name: str, text: str) -> None:
        self.origin = dns.name.from_text(name)
        self.zone: dns.zone.Zone | None = None
        self.error = ""
        try:
            self.zone = dns.zone.from_text(text, origin=self.origin, relativize=False)
        except dns.exception.DNSException as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            return
        # Every owner name and the names between it and the origin (empty non-terminals
        # exist: a question about one is NODATA, not NXDOMAIN).
        self.names: set[dns.name.Name] = set()
        for owner in self.zone.nodes:
            name = owner
            while name != self.origin and name not in self.names:
                self.names.add(name)
                name = name.parent()
        self.names.add(self.origin)

    def node(self, name: dns.name.Name) -> dns.node.Node | None:
        """The node that answers for `name` (its own, a wildcard's, an empty one), or None."""
        assert self.zone is not None
        if name in self.names:
            return self.zone.get_node(name) or dns.node.Node()
        encloser = name.parent()
        while encloser not in self.names:
            encloser = encloser.parent()
        return self.zone.get_node(dns.name.Name((b"*", *encloser.labels)))

    def negative(self, response: dns.message.Message) -> None:
        """The SOA in the authority section, with the negative TTL (RFC 2308)."""
        assert self.zone is not None
        soa = self.zone.find_rdataset(self.origin, dns.rdatatype.SOA)
        ttl = min(soa.ttl, soa[0].minimum)
        rrset = dns.rrset.from_rdata_list(self.origin, ttl, list(soa))
        response.authority.append(rrset)


def answer(
    zones: Mapping[dns.name.Name, Zone],
    query: dns.message.Message,
    secure: Collection[dns.name.Name] = (),
) -> dns.message.Message:
    """The authoritative response to `query` from `zones`; AD set for the `secure` ones."""
    response = dns.message.make_response(query)
    if _validated(query, secure):
        response.flags |= dns.flags.AD
    if query.opcode() != 0 or len(query.question) != 1:
        response.set_rcode(dns.rcode.NOTIMP if query.opcode() else dns.rcode.FORMERR)
        return response
    question = query.question[0]
    candidates = [z for origin, z in zones.items() if question.name.is_subdomain(origin)]
    if question.rdclass != dns.rdataclass.IN or not candidates:
        response.set_rcode(dns.rcode.REFUSED)
        return response
    zone = max(candidates, key=lambda z: len(z.origin))
    if zone.zone is None:
        response.set_rcode(dns.rcode.SERVFAIL)
        return response
    response.flags |= dns.flags.AA
    name = question.name
    for _ in range(CHAIN):
        node = zone.node(name)
        if node is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
            zone.negative(response)
            break
        found = node.get_rdataset(dns.rdataclass.IN, question.rdtype)
        if found is not None:
            response.answer.append(dns.rrset.from_rdata_list(name, found.ttl, list(found)))
            break
        alias = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.CNAME)
        if alias is None:
            zone.negative(response)  # NODATA
            break
        response.answer.append(dns.rrset.from_rdata_list(name, alias.ttl, list(alias)))
        name = alias[0].target
        if not name.is_subdomain(zone.origin):
            break  # the client follows it elsewhere
    return response


def _validated(query: dns.message.Message, secure: Collection[dns.name.Name]) -> bool:
    """Whether a validating resolver would set AD: asked for it, and the name is secure."""
    if not query.question or not (query.flags & dns.flags.AD or query.ednsflags & dns.flags.DO):
        return False
    return any(query.question[0].name.is_subdomain(origin) for origin in secure)


class ZoneResolver:
    """dnslib's resolver interface, answered by `answer` from dnspython zones."""

    def __init__(
        self, zones: Mapping[dns.name.Name, Zone], secure: Collection[dns.name.Name] = ()
    ) -> None:
        self.zones = zones
        self.secure = secure

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        query = dns.message.from_wire(bytes(request.pack()))
        response = answer(self.zones, query, self.secure)
        if handler.protocol == "tcp":
            limit = 65535
        else:
            limit = max(query.payload, 512) if query.edns >= 0 else 512
        try:
            wire = response.to_wire(max_size=limit)
        except dns.exception.TooBig:  # too big for UDP: TC set, the client asks over TCP
            truncated = dns.message.make_response(query)
            truncated.flags |= dns.flags.TC | (response.flags & dns.flags.AA)
            wire = truncated.to_wire()
        return DNSRecord.parse(wire)


class NameServer:
    """`zones` (name → zone-file text) served on a loopback port the kernel picks."""

    def __init__(
        self,
        root: Path,
        zones: Mapping[str, str],
        host: str = LOOPBACK,
        secure: Collection[str] = (),
    ) -> None:
        self.root = root  # where the log goes
        self.zones = dict(zones)
        self.secure = [dns.name.from_text(name) for name in secure]
        self.host = host
        self.port = 0  # known once started
        self.servers: list[DNSServer] = []
        self._lines: list[str] = []

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def resolver(self, timeout: float = 2.0) -> dns.resolver.Resolver:
        """A dnspython resolver that asks this server only."""
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [self.host]
        resolver.port = self.port
        resolver.timeout = resolver.lifetime = timeout
        return resolver

    def start(self) -> NameServer:
        loaded = [Zone(name, text) for name, text in self.zones.items()]
        resolver = ZoneResolver({zone.origin: zone for zone in loaded}, self.secure)
        logger = DNSLogger("request,reply,error", prefix=False, logf=self._lines.append)
        for zone in loaded:
            if zone.error:
                self._lines.append(f"zone {zone.origin} not loaded (SERVFAIL): {zone.error}")
        for _ in range(20):  # the UDP port may be taken for TCP: then another pair
            udp = DNSServer(resolver, address=self.host, port=0, logger=logger)
            port: int = udp.server.server_address[1]
            try:
                tcp = DNSServer(resolver, address=self.host, port=port, tcp=True, logger=logger)
            except OSError:
                udp.server.server_close()
                continue
            self.port, self.servers = port, [udp, tcp]
            break
        else:
            raise RuntimeError("no loopback port free for both UDP and TCP")
        for server in self.servers:
            server.start_thread()
        return self

    def log(self) -> str:
        """The questions asked and the answers given so far, and zones that did not load."""
        return "\n".join(self._lines)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
            server.server.server_close()
            server.thread.join()
        self.servers = []
        if self.root.is_dir():
            (self.root / "dns.log").write_text(self.log() + "\n")

    def __enter__(self) -> NameServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


class Silent:
    """A loopback 'DNS server' that takes queries over UDP and TCP and never answers."""

    def __init__(self, host: str = LOOPBACK) -> None:
        self.host = host
        while True:  # a UDP port the kernel picks, and the same port for TCP
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.udp.bind((host, 0))
            self.port: int = self.udp.getsockname()[1]
            self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                self.tcp.bind((host, self.port))
                break
            except OSError:
                self.udp.close()
                self.tcp.close()
        self.tcp.listen()
        self._held: list[socket.socket] = []
        self._closed = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _drain(self) -> None:
        while not self._closed.is_set():
            try:
                self.udp.recv(4096)
            except OSError:
                return

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                return
            self._held.append(conn)

    def close(self) -> None:
        self._closed.set()
        for sock in (self.udp, self.tcp, *self._held):
            sock.close()

    def __enter__(self) -> Silent:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
