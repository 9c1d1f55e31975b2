"""A host: the connections behind one or more interfaces, demultiplexed by 4-tuple.

The host is the machine a driver talks to (docs/design.md section 3): ``receive(port, packet, now)``,
``handle_timer(now)``, and the pulled outputs ``outgoing(now)``, ``next_event()``, ``get_timer()``.
It owns what outlives a single connection: the ephemeral port allocator, the 4-tuples that must
not be reused yet (TIME-WAIT, and pairs we just reset whose RST may have been lost), the
listeners, and the RST answer for segments that match nothing (RFC 9293 3.10.7.1).

What a connection means to the application lives in its *owner* (a client signalling scheme, a
server application, a converter session): the host hands every connection event to the owner,
and owners append application-level facts with :meth:`Host.emit`.
"""

from __future__ import annotations

import heapq
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from mpsim.proto.errors import LocalProtocolError
from mpsim.proto.tcp import (
    Closed,
    CloseReason,
    IpAddress,
    Rng,
    SynDataMode,
    TcpConnection,
    TcpEvent,
    TcpExtension,
    TcpPolicy,
    TcpState,
    mypyc_attr,
    reset_for,
)
from mpsim.wire.segment import IpPacket, TcpFlags

FourTuple = tuple[IpAddress, int, IpAddress, int]

#: Linux net.ipv4.ip_local_port_range default.
EPHEMERAL_PORTS = (32768, 60999)


class Transmit(NamedTuple):
    """A packet to put on the link behind interface ``port``. A named tuple rather than a frozen
    dataclass: one is made per packet sent, and a tuple is built in one step."""

    port: str
    packet: IpPacket


class ConnectionOwner(Protocol):
    """Whoever gives a connection its meaning; told of every event of the connections it owns."""

    def on_tcp_event(self, host: Host, conn: TcpConnection, event: TcpEvent, now: float) -> None: ...


@dataclass(frozen=True, slots=True)
class WatchedConnectionClosed:
    """A connection given to :meth:`Host.watch_close` is gone (``reason``: how, as its Closed said)."""

    four_tuple: tuple
    reason: CloseReason


@dataclass(frozen=True, slots=True)
class Acceptance:
    """A listener's answer to a SYN: how to open the passive connection and who owns it."""

    owner: ConnectionOwner
    syn_data_mode: SynDataMode = SynDataMode.DROP
    withhold_synack: bool = False
    extensions: tuple[TcpExtension, ...] = ()


class Listener(Protocol):
    """A passive opener on one port. Returns None to refuse (the host then answers RST)."""

    def on_syn(self, host: Host, packet: IpPacket, now: float) -> Acceptance | None: ...


class PortAllocator:
    """Ephemeral source ports that never reuse a 4-tuple still in use, in TIME-WAIT or just reset.

    Like Linux, the search starts at a random offset and walks the range; unlike Linux it keeps
    walking from where it stopped, so consecutive connections get consecutive ports (readable traces).
    """

    def __init__(self, rng: Rng, low: int = EPHEMERAL_PORTS[0], high: int = EPHEMERAL_PORTS[1]) -> None:
        if not 1 <= low <= high <= 65535:
            raise ValueError(f"bad ephemeral port range {low}..{high}")
        self.low, self.high = low, high
        self._next = low + rng.getrandbits(16) % (high - low + 1)
        self._quarantine: dict[FourTuple, float] = {}
        self._prune_above = 1024  # expired entries of other destinations are swept past this size
        self.allocated = 0

    def quarantine(self, four_tuple: FourTuple, until_s: float) -> None:
        """Do not hand out ``four_tuple`` again before ``until_s``."""
        self._quarantine[four_tuple] = max(until_s, self._quarantine.get(four_tuple, until_s))

    def is_quarantined(self, four_tuple: FourTuple, now: float) -> bool:
        until_s = self._quarantine.get(four_tuple)
        if until_s is None:
            return False
        if until_s <= now:
            del self._quarantine[four_tuple]
            return False
        return True

    def allocate(self, local_addr: IpAddress, remote_addr: IpAddress, remote_port: int, now: float,
                 in_use: Any) -> int:
        """A local port for a new connection; LocalProtocolError when every 4-tuple is taken."""
        if len(self._quarantine) > self._prune_above:
            self._quarantine = {t: until_s for t, until_s in self._quarantine.items() if until_s > now}
            self._prune_above = max(1024, 2 * len(self._quarantine))
        span = self.high - self.low + 1
        for _ in range(span):
            port = self._next
            self._next = self.low + (self._next - self.low + 1) % span
            four_tuple = (local_addr, port, remote_addr, remote_port)
            if four_tuple not in in_use and not self.is_quarantined(four_tuple, now):
                self.allocated += 1
                return port
        raise LocalProtocolError(f"no free ephemeral port towards {remote_addr}:{remote_port}")


# Compiled, Host would refuse interpreted subclasses (ClientHost, ServerHost, RelayHost, tests' own).
@mypyc_attr(allow_interpreted_subclasses=True)
class Host:
    """Connections, listeners and ports of one host. Subclasses add owners and caches."""

    def __init__(self, name: str, interfaces: dict[str, IpAddress], *, rng: Rng,
                 policy: TcpPolicy | None = None) -> None:
        if not interfaces:
            raise ValueError(f"host {name!r} needs at least one interface")
        self.name = name
        self.interfaces = dict(interfaces)
        self.rng = rng
        self.policy = policy or TcpPolicy()
        self.ports = PortAllocator(rng)
        self.connections: dict[FourTuple, TcpConnection] = {}
        self.owners: dict[int, ConnectionOwner] = {}  # id(conn) -> owner
        # id(conn) -> conn whose end is reported (watch_close); the object itself, so that an id
        # reused after a reboot forgot the connection never matches another one
        self._watched: dict[int, TcpConnection] = {}
        # (local port, remote port) -> the connection a packet with those ports was last found
        # for: the per-packet lookup hashes two ints rather than two addresses (see connection_for).
        self._by_ports: dict[tuple[int, int], TcpConnection] = {}
        self.listeners: dict[int, Listener] = {}
        self._out: list[Transmit] = []
        self._timers: list[tuple[float, int, TcpConnection]] = []  # (deadline, arm order, connection)
        self._timer_seq = 0
        # id(conn) -> the deadline of its newest entry in _timers while that entry is unpopped: an
        # unchanged deadline is not pushed again (the older entry, same deadline, comes up first).
        self._armed: dict[int, float] = {}
        self._events: deque[Any] = deque()
        self.rsts_for_unknown = 0
        #: Counters named like Linux's MPTcpExt / TcpExt MIB where one exists (MPCapableSYNTX, ...).
        self.mib: Counter[str] = Counter()

    # --- the machine contract ----------------------------------------------------------------

    def receive(self, port: str, packet: IpPacket, now: float) -> None:
        """A packet arrived on interface ``port``.

        For one of our addresses: the connection on its 4-tuple, else the listener of its port,
        else an RST. For another address: the same, with :meth:`foreign_listener` in place of
        the listeners, and :meth:`not_ours` for what neither takes (a plain host drops it)."""
        if not isinstance(packet, IpPacket):
            self.on_icmp(port, packet, now)  # an ICMP error (middlebox.IcmpUnreachable), not a segment
            return
        seg = packet.segment
        conn = self.connection_for(packet)
        if conn is not None and conn.state is not TcpState.TIME_WAIT:
            # Only a connection in TIME-WAIT may give way to a listener (may_reopen below): the
            # others take the packet without the listener being looked up.
            conn.receive(packet, now)
            self._collect(conn, now)
            return
        ours = packet.dst in self.interfaces.values()
        listener = self.listeners.get(seg.dst_port) if ours else self.foreign_listener(port, packet)
        if conn is not None and listener is not None and conn.may_reopen(seg):
            # A new SYN may end TIME-WAIT early and reach the listener (RFC 1122 4.2.2.13, RFC 6191).
            conn.end_time_wait(now)
            self._collect(conn, now)
            conn = None
        if conn is not None:
            conn.receive(packet, now)
            self._collect(conn, now)
            return
        if listener is not None and seg.flags & TcpFlags.SYN and not seg.flags & (TcpFlags.ACK | TcpFlags.RST):
            acceptance = listener.on_syn(self, packet, now)
            if acceptance is not None:
                conn = TcpConnection.passive(packet, iss=self.rng.getrandbits(32), policy=self.policy, now=now,
                                             syn_data_mode=acceptance.syn_data_mode,
                                             withhold_synack=acceptance.withhold_synack,
                                             extensions=acceptance.extensions)
                self._adopt(conn, acceptance.owner)
                self._collect(conn, now)
                return
        if not ours:
            self.not_ours(port, packet, now)
            return
        rst = reset_for(packet)
        if rst is not None:
            self.rsts_for_unknown += 1
            self._transmit(rst)

    def handle_timer(self, now: float) -> None:
        due: dict[int, TcpConnection] = {}
        timers, armed = self._timers, self._armed
        while timers and timers[0][0] <= now:
            deadline, _, conn = heapq.heappop(timers)
            key = id(conn)
            if armed.get(key) == deadline:
                del armed[key]
            if key in self.owners and conn.get_timer() == deadline:  # _timer_is_live, inlined
                due.setdefault(key, conn)
        for conn in due.values():  # in deadline order, ties in the order they were armed
            conn.handle_timer(now)
            self._collect(conn, now)

    def get_timer(self) -> float | None:
        timers, armed, owners = self._timers, self._armed, self.owners
        while timers:
            deadline, _, conn = timers[0]
            key = id(conn)
            if key in owners and conn.get_timer() == deadline:  # _timer_is_live, inlined
                return deadline
            heapq.heappop(timers)
            if armed.get(key) == deadline:
                del armed[key]
        return None

    def connection_for(self, packet: IpPacket) -> TcpConnection | None:
        """The connection on ``packet``'s 4-tuple as seen from here
        (``connections.get((dst, dst_port, src, src_port))``), or None.

        Hashing an ``IPv4Address`` is Python code (it formats a hex string), and every packet
        needs this lookup, so the connection is first looked up by its two ports alone and
        taken if its addresses are the packet's very objects (the machines hand addresses on by
        reference, so they mostly are) and it is still ours; otherwise the 4-tuple decides, and
        the ports remember what it found."""
        seg = packet.segment
        ports = (seg.dst_port, seg.src_port)
        conn = self._by_ports.get(ports)
        if conn is not None and conn.local_addr is packet.dst and conn.remote_addr is packet.src \
                and id(conn) in self.owners:  # owners holds exactly the connections in connections
            return conn
        conn = self.connections.get((packet.dst, seg.dst_port, packet.src, seg.src_port))
        if conn is not None:
            self._by_ports[ports] = conn
        return conn

    def _timer_is_live(self, deadline: float, conn: TcpConnection) -> bool:
        return self._is_ours(conn) and conn.get_timer() == deadline

    def _is_ours(self, conn: TcpConnection) -> bool:
        """``self.connections.get(conn.four_tuple) is conn``, without hashing two addresses:
        ``owners`` holds exactly the connections in ``connections`` (see _adopt and _drop)."""
        return id(conn) in self.owners

    def outgoing(self, now: float) -> list[Transmit]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> Any | None:
        return self._events.popleft() if self._events else None

    def on_icmp(self, port: str, message: Any, now: float) -> None:
        """An ICMP error arrived (:class:`mpsim.proto.middlebox.IcmpUnreachable`): counted, and
        handed to :meth:`connection_unreachable` when it quotes one of our connections."""
        self.mib["IcmpInDestUnreachs"] += 1
        original = message.original
        conn = self.connections.get((original.src, original.segment.src_port, original.dst,
                                     original.segment.dst_port))
        if conn is not None:
            self.connection_unreachable(conn, message, now)

    def connection_unreachable(self, conn: TcpConnection, message: Any, now: float) -> None:
        """An ICMP error quoted a segment of ``conn``; by default the connection decides (it ends
        an attempt in SYN-SENT, as Linux does)."""
        conn.icmp_unreachable(message.code, now)
        self._collect(conn, now)

    # --- for owners and subclasses ------------------------------------------------------------

    def emit(self, event: Any) -> None:
        """Record an application-level fact for the driver and the trace."""
        self._events.append(event)

    def listen(self, port: int, listener: Listener) -> None:
        if port in self.listeners:
            raise LocalProtocolError(f"{self.name}: port {port} already has a listener")
        self.listeners[port] = listener

    def open(self, owner: ConnectionOwner, local_addr: IpAddress, remote_addr: IpAddress, remote_port: int,
             now: float, *, syn_payload: bytes = b"", extensions: tuple[TcpExtension, ...] = (),
             policy: TcpPolicy | None = None, local_port: int | None = None) -> TcpConnection:
        """Actively open a connection from a fresh ephemeral port, or from ``local_port`` (like
        bind() with SO_REUSEADDR: only a live connection on the same 4-tuple is refused, a
        quarantined pair is not, which is how tests recreate a 4-tuple collision)."""
        if not self.may_open_from(local_addr):
            raise LocalProtocolError(f"{self.name} has no address {local_addr}")
        if local_port is None:
            port = self.ports.allocate(local_addr, remote_addr, remote_port, now, self.connections)
        elif (local_addr, local_port, remote_addr, remote_port) in self.connections:
            raise LocalProtocolError(f"{self.name}: {local_addr}:{local_port} -> {remote_addr}:{remote_port} is in use")
        else:
            port = local_port
        conn = TcpConnection.active(local_addr, port, remote_addr, remote_port, iss=self.rng.getrandbits(32),
                                    policy=policy or self.policy, now=now, syn_payload=syn_payload,
                                    extensions=extensions)
        self._adopt(conn, owner)
        self._collect(conn, now)
        return conn

    def abort(self, conn: TcpConnection, now: float) -> None:
        """Reset a connection (its 4-tuple is then quarantined, see :meth:`_collect`)."""
        if conn.four_tuple not in self.connections:
            return
        conn.abort(now)
        self._collect(conn, now)

    def watch_close(self, conn: TcpConnection) -> None:
        """Report the end of ``conn`` (CLOSED, however it got there) as a
        :class:`WatchedConnectionClosed` fact: for a driver that waits for a connection's close
        (a simulated transfer's, docs/sim.md "Routes") without owning the connection."""
        if self._is_ours(conn):
            self._watched[id(conn)] = conn

    def collect(self, conn: TcpConnection, now: float) -> None:
        """Flush a connection's packets and events after an owner acted on it directly."""
        self._collect(conn, now)

    def interface_of(self, address: IpAddress) -> str:
        for port, addr in self.interfaces.items():
            if addr is address or addr == address:  # the same object, mostly: no address comparison
                return port
        raise LocalProtocolError(f"{self.name} has no interface with address {address}")

    # --- for hosts that answer for addresses that are not theirs (a transparent proxy) --------

    def foreign_listener(self, port: str, packet: IpPacket) -> Listener | None:
        """The listener for ``packet``, addressed to an address that is not ours and matching no
        connection, or None. A plain host has none; a proxy on the path returns one for the SYNs
        it intercepts, and the host then opens, owns and (from TIME-WAIT) reopens those
        connections exactly as it does for its own addresses."""
        return None

    def not_ours(self, port: str, packet: IpPacket, now: float) -> None:
        """A packet for another address that no connection or foreign listener took. Hosts do
        not forward, so a plain host drops it; a router-like subclass forwards it."""

    def route(self, packet: IpPacket) -> str:
        """The interface a packet we send leaves by: that of its source address. A host that speaks
        with foreign addresses routes those by destination instead."""
        return self.interface_of(packet.src)

    def may_open_from(self, local_addr: IpAddress) -> bool:
        """Whether :meth:`open` may use ``local_addr``: our own addresses, and in a subclass the
        foreign ones it speaks for (a proxy that keeps the client's address towards the server)."""
        return local_addr in self.interfaces.values()

    # --- internals --------------------------------------------------------------------------

    def _arm(self, conn: TcpConnection) -> None:
        # Every input of a connection ends in _collect, so its deadline is noted here; entries
        # that went stale (the deadline moved, the connection left) are skipped when popped.
        # A heap keeps get_timer cheap with thousands of connections in TIME-WAIT.
        deadline = conn.get_timer()
        if deadline is not None:
            key = id(conn)
            if key in self.owners and self._armed.get(key) != deadline:  # _is_ours, inlined
                self._armed[key] = deadline
                self._timer_seq += 1
                heapq.heappush(self._timers, (deadline, self._timer_seq, conn))

    def _adopt(self, conn: TcpConnection, owner: ConnectionOwner) -> None:
        self.connections[conn.four_tuple] = conn
        self.owners[id(conn)] = owner
        self._by_ports[(conn.local_port, conn.remote_port)] = conn

    def _drop(self, conn: TcpConnection) -> None:
        self.connections.pop(conn.four_tuple, None)
        self.owners.pop(id(conn), None)
        if self._watched.get(id(conn)) is conn:
            del self._watched[id(conn)]
        ports = (conn.local_port, conn.remote_port)
        if self._by_ports.get(ports) is conn:  # bounded: an entry lives no longer than its connection
            del self._by_ports[ports]
        self._armed.pop(id(conn), None)  # its heap entries are stale now; the id may be reused

    def _transmit(self, packet: IpPacket) -> None:
        self._out.append(Transmit(self.route(packet), packet))

    def _collect(self, conn: TcpConnection, now: float) -> None:
        # An owner may act on the connection while handling an event (send, abort), which can
        # produce more packets and events: loop until the connection is quiet.
        for _ in range(64):
            output = conn.pull_output()
            if output is None:
                self._arm(conn)
                return
            packets, events = output
            for packet in packets:
                self._out.append(Transmit(self.route(packet), packet))  # _transmit, inlined
            owner = self.owners.get(id(conn))
            for event in events:
                if isinstance(event, Closed):
                    if self._watched and self._watched.get(id(conn)) is conn:
                        del self._watched[id(conn)]
                        self.emit(WatchedConnectionClosed(conn.four_tuple, event.reason))
                    self._drop(conn)
                    if not event.clean:
                        # Reset, aborted or timed out: the peer may still hold the old connection
                        # (a lost RST), so the pair waits as long as TIME-WAIT would have.
                        self.ports.quarantine(conn.four_tuple, now + conn.policy.time_wait_s)
                if owner is not None:
                    owner.on_tcp_event(self, conn, event, now)
        raise RuntimeError(f"{self.name}: connection {conn.four_tuple} did not settle")  # a bug, not input
