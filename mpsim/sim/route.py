"""Routes: the real link directions a transfer's light segments cross (docs/sim.md, "Routes").

A :class:`Route` is the ordered list of :class:`~mpsim.sim.link.LinkDirection`\\ s one direction of
one subflow crosses, e.g. a client's ``path.dsl`` up, then (after the router) ``server.in``. To a
:class:`~mpsim.sim.transfer.BulkTransfer` it stands in for one direction (``send``, ``name``,
``deliver``), so the transfer's senders and receivers do not know how many hops there are.

How a light segment (:class:`~mpsim.sim.transfer.Segment`) moves:

* :meth:`Route.send` stamps it with the route and hop 0 and offers it to the first hop, where it
  meets that direction's filters (only those with ``accepts_light_segments``), loss model, queue
  and rate like any other packet, so transfers and negotiation packets share queues;
* when a hop delivers it at its far end, the node there does not give it to its machine: a
  :class:`~mpsim.sim.node.SimNode` hands every light segment to :func:`forward_segment`, which
  calls :meth:`Route.arrived`; a hop connected to no node (a household's own access line) has
  :func:`forward_segment` as its ``deliver``;
* :meth:`Route.arrived` offers it to the next hop, or after the last hop hands it to its endpoint
  (``deliver``, :func:`mpsim.sim.transfer.deliver_segment`).

Routes are static: whoever builds one chooses the hops (the simulation follows its router's
table, :meth:`mpsim.proto.harness.Router.port_for`). A route does not re-route after a change.

Folding:

* hops with no rate limit, no loss, no jitter, no filters and no capture have no queue: a run of
  consecutive such hops is folded into one delay (one SimPy event instead of one per hop; the
  folded directions' counters are kept as if each had carried the segment). ``volatile`` hops
  (whose filters may change later, the access links at a new attachment) are never folded.

Captures: ``legs`` gives, per hop, the 4-tuple and sequence bases a capture shows for the segment
on that hop (:class:`Flow`), so a pcap of a link shows the transfer with the addresses and ports
of the connection the negotiation opened. Where the flow changes (at a converter), a recorded
segment is copied with the new flow, so the trace keeps what each hop carried.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from simpy.events import NORMAL

from mpsim.sim.link import LIGHT_FORWARDERS, DueCall, LinkDirection
from mpsim.sim.loss import NoLoss
from mpsim.sim.transfer import Segment, deliver_segment

#: Bound on the hops of a route (a routing loop is an error, not a long route).
MAX_HOPS = 16


@dataclass(frozen=True, slots=True)
class Flow:
    """What a capture shows for a segment on one hop: its addresses and ports, and the bases
    added to the model's sequence numbers (which count from 0): ``seq_base`` to ``seq`` (the
    sender's), ``ack_base`` to ``ack`` (the receiver's), both modulo 2**32. ``data_level``: the
    hop is a relay's plain TCP leg (the converter's connection to the server), which carries the
    MPTCP connection's byte stream: the capture shows the DSN and DATA_ACK as TCP sequence and
    acknowledgement numbers and no MPTCP or SACK option, every subflow on the one 4-tuple."""

    src_ip: Any
    src_port: int
    dst_ip: Any
    dst_port: int
    seq_base: int = 1
    ack_base: int = 1
    data_level: bool = False
    #: A connection (``snd_nxt``, ``rcv_nxt``) whose numbers the flow continues, read when a capture
    #: is made (so after everything it sent, its FIN included); ``conn_is_src``: whether its
    #: local side is this flow's source. Overrides the two bases.
    conn: Any = None
    conn_is_src: bool = True
    #: The negotiated MPTCP connection (a proto ``TcpConnection``) whose data-level numbers a
    #: capture continues (DSNs from its keys' IDSNs and the bytes it carried; :meth:`data_bases`),
    #: for every subflow of it; ``conn_is_src`` says which side is this flow's source. None: DSNs
    #: from 1.
    mptcp_conn: Any = None
    #: Set by :meth:`pinned`: the data-level position (a proto ``StreamPosition``, from the
    #: connection's local side) and whether the flow is the connection's own subflow.
    position: Any = None
    first_subflow: bool = False

    def pinned(self) -> Flow:
        """This flow with its bases fixed as they stand now, for a connection that keeps going
        after the transfer starts (it carries the transfer, then closes after it: its later
        numbers must not move the transfer's)."""
        seq_base, ack_base = self.bases()
        position = self.position
        if position is None and self.mptcp_conn is not None:
            position = next((ext.stream_position(self.mptcp_conn) for ext in self.mptcp_conn.extensions
                             if hasattr(ext, "stream_position")), None)
        return Flow(self.src_ip, self.src_port, self.dst_ip, self.dst_port, seq_base, ack_base, self.data_level,
                    None, self.conn_is_src, None, position, self.first_subflow or self.conn is not None)

    def bases(self) -> tuple[int, int]:
        """(seq_base, ack_base) as they stand now."""
        conn = self.conn
        if conn is None:
            return self.seq_base, self.ack_base
        return (conn.snd_nxt, conn.rcv_nxt) if self.conn_is_src else (conn.rcv_nxt, conn.snd_nxt)

    def data_bases(self) -> tuple[int, int, int]:
        """(DSN base, Data ACK base, SSN base) as they stand now: added to a segment's ``dsn``,
        ``data_ack`` and ``seq`` for the DSS a capture shows. Subflow 0 (``conn`` set) continues
        the connection's SSNs; another subflow has ISN 0 (its MP_JOIN SYN's), so SSN = seq + 1."""
        position = self.position
        if position is None and self.mptcp_conn is not None:
            position = next((ext.stream_position(self.mptcp_conn) for ext in self.mptcp_conn.extensions
                             if hasattr(ext, "stream_position")), None)
        if position is None:
            return 1, 1, 1
        dsn, data_ack = (position.local_dsn, position.peer_dsn) if self.conn_is_src else \
            (position.peer_dsn, position.local_dsn)
        if self.conn is None and not self.first_subflow:
            ssn = 1
        else:
            ssn = position.local_ssn if self.conn_is_src else position.peer_ssn
        return dsn, data_ack, ssn

    def reversed(self) -> Flow:
        return Flow(self.dst_ip, self.dst_port, self.src_ip, self.src_port, self.ack_base, self.seq_base,
                    self.data_level, self.conn, not self.conn_is_src, self.mptcp_conn, self.position,
                    self.first_subflow)


def forward_segment(segment: Segment) -> None:
    """A light segment reached the far end of its current hop: its route moves it on."""
    segment.route.arrived(segment)


LIGHT_FORWARDERS.add(forward_segment)  # a direction delivering here calls Route.arrived_at itself


def is_pure_delay(direction: LinkDirection) -> bool:
    """A direction with no queue, nothing that drops or reorders, and nothing that records."""
    trace = direction.trace
    return (direction.rate_bps is None and type(direction.loss) is NoLoss and not direction.jitter_s
            and not direction.filters and not (trace is not None and trace.record_packets))


class FoldedHops:
    """Consecutive pure-delay hops as one step: the sum of their delays, one event."""

    def __init__(self, route: Route, hops: Sequence[LinkDirection]) -> None:
        self.route = route
        self.hops = tuple(hops)
        self.env = hops[0].env
        self.delay_s = sum(hop.delay_s for hop in hops)
        self.name = "+".join(hop.name for hop in hops)

    def send(self, segment: Segment) -> bool:
        size_bytes = segment.size_bytes
        for hop in self.hops:
            counters = hop.counters
            counters.packets_sent += 1
            counters.bytes_sent += size_bytes
        DueCall(self.env, self.delay_s, NORMAL, partial(self._arrive, segment))
        return True

    def send_light_at(self, segment: Segment, now: float) -> bool:
        """:meth:`send` (which needs no time: its delay is fixed)."""
        return self.send(segment)

    def _arrive(self, segment: Segment, _event: Any) -> None:
        size_bytes = segment.size_bytes
        for hop in self.hops:
            counters = hop.counters
            counters.packets_delivered += 1
            counters.bytes_delivered += size_bytes
        self.route.arrived(segment)


class Route:
    """The hops one direction of a subflow crosses (see the module doc)."""

    def __init__(self, name: str, hops: Sequence[LinkDirection], *,
                 legs: Sequence[Flow | None] | None = None,
                 volatile: Collection[LinkDirection] = (), fold: bool = True) -> None:
        hops = list(hops)
        if not hops:
            raise ValueError(f"route {name!r}: a route needs at least one hop")
        if len(hops) > MAX_HOPS:
            raise ValueError(f"route {name!r}: {len(hops)} hops, more than {MAX_HOPS} (a routing loop?)")
        if legs is not None and len(legs) != len(hops):
            raise ValueError(f"route {name!r}: legs needs one flow per hop ({len(hops)}), got {len(legs)}")
        self.name = name
        self.hops = tuple(hops)
        #: Called with the segment after the last hop (BulkTransfer's _attach checks it).
        self.deliver: Callable[[Segment], None] = deliver_segment
        keep = set(map(id, volatile))
        steps: list[Any] = []
        step_legs: list[Flow | None] = []
        # A step starts at hop index i; folding never crosses a change of flow.
        i = 0
        while i < len(hops):
            j = i + 1
            folded = fold and is_pure_delay(hops[i]) and id(hops[i]) not in keep
            if folded:
                while j < len(hops) and is_pure_delay(hops[j]) and id(hops[j]) not in keep \
                        and (legs is None or legs[j] == legs[i]):
                    j += 1
            steps.append(FoldedHops(self, hops[i:j]) if folded else hops[i])
            step_legs.append(None if legs is None else legs[i])
            i = j
        self.steps = tuple(steps)
        self.legs = tuple(step_legs)
        self._last = len(steps) - 1
        # Step indexes where the flow changes (a capture relabels the segment there): most routes
        # have none, and arrived() then does no flow check at all.
        self._relabel = frozenset(k for k in range(1, len(step_legs)) if step_legs[k] is not step_legs[k - 1])
        self._sends = tuple(step.send for step in steps)  # bound once: one lookup less per hop
        self._sends_at = tuple(step.send_light_at for step in steps)
        self.recording = any(hop.trace is not None and hop.trace.record_packets for hop in hops)

    def __repr__(self) -> str:
        return f"<Route {self.name}: {' -> '.join(hop.name for hop in self.hops)}>"

    def send(self, segment: Segment) -> bool:
        """Offer ``segment`` to the first hop (at ``env.now``); True if that hop accepted it."""
        segment.route = self
        segment.hop = 0
        segment.flow = self.legs[0]
        return self._sends[0](segment)

    def send_light_at(self, segment: Segment, now: float) -> bool:
        """:meth:`send`, ``now`` being ``env.now`` (a transfer passes the time it sends at, so
        the first hop need not read the clock)."""
        segment.route = self
        segment.hop = 0
        segment.flow = self.legs[0]
        return self._sends_at[0](segment, now)

    def arrived(self, segment: Segment) -> None:
        """``segment`` reached the end of its current step: the next step, or the endpoint."""
        index = segment.hop + 1
        if index > self._last:
            self.deliver(segment)
            return
        if index in self._relabel:
            if self.recording:  # the trace holds the segment as the last hop carried it: a copy goes on
                segment = segment.copy()
            segment.flow = self.legs[index]
        segment.hop = index
        self._sends[index](segment)

    def arrived_at(self, segment: Segment, now: float) -> None:
        """:meth:`arrived`, ``now`` being ``env.now`` (passed on by a direction that delivers to
        :func:`forward_segment`: the next hop need not read the clock)."""
        index = segment.hop + 1
        if index > self._last:
            self.deliver(segment)
            return
        if index in self._relabel:
            if self.recording:  # as in arrived()
                segment = segment.copy()
            segment.flow = self.legs[index]
        segment.hop = index
        self._sends_at[index](segment, now)
