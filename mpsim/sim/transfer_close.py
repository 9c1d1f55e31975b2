"""A transfer carried inside the life of the connection its negotiation opened (docs/sim.md "Routes").

SimPy-side (it schedules on the simulation's clock and moves light segments), so it lives with the
transfer model in mpsim/sim; the experiment layer wires it up (mpsim/experiment/simulation.py).

A simulated transfer's bytes move as light segments (:mod:`mpsim.sim.transfer`) on the 4-tuple
and sequence numbers of the connection the negotiation opened; the proto machines at both ends
of that connection hold it open meanwhile and close it after the transfer, as an application
that writes (or reads) everything and then closes does:

* at the start every connection of a *leg* (the two machines' connections one
  :class:`~mpsim.sim.transfer.BulkTransfer` runs on: client and server, or client and proxy and
  proxy and server through a relay) is held (:meth:`TcpConnection.hold_close`): a close asked
  for meanwhile, by the client answering a FIN, the server's application or a proxy's relay
  coupling its two legs, waits;
* when a leg's receiving application has read the last byte (the leg's ``done``), both
  connections count the leg's bytes as carried (:meth:`TcpConnection.carry_stream`; on MPTCP the
  data level too, :meth:`carry_data`, the first subflow's share on its own numbers) and are
  released: the sender that wrote the data (the server on a download, the client on an upload)
  closes, with a DATA_FIN on its FIN on MPTCP (RFC 8684 3.3.3); a proxy's FIN towards the
  final receiver goes when its relay asks for it (after the origin's FIN, mpsim/proto/relay.py)
  and its leg is done; the receiver answers the FIN with its own;
* once the first subflow of a leg has closed (one side CLOSED,
  :class:`mpsim.proto.host.WatchedConnectionClosed`), its joined subflows close with light FIN
  segments (:class:`JoinedSubflowClose`); the transfer counts as running (the simulation's
  drain) until all of that is through.

Simplified: the sender's FIN leaves when its leg's receiver has the last byte (Linux sends it
with or right after the last data segment, half a round trip earlier); the DATA_FIN rides on the
first subflow's FIN (Linux sends it on a bare ACK on every subflow first, docs/sim.md "Routes");
a joined subflow's close is not retransmitted; a connection that is not idle when its leg ends
(its own bytes unacknowledged, or already closing) is released without carrying the leg's bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mpsim.proto.host import WatchedConnectionClosed
from mpsim.proto.tcp import TcpConnection, TcpState
from mpsim.sim.link import schedule_call
from mpsim.sim.node import SimNode
from mpsim.sim.transfer import FLAG_ACK, Segment

FLAG_FIN = 0x01
#: How long a joined subflow's FIN exchange may take before the transfer stops waiting for it
#: (its light segments are not retransmitted: a lost one would leave it open for good).
JOINED_CLOSE_WAIT_S = 3.0


@dataclass
class End:
    """One machine's connection of a leg."""

    node: SimNode
    conn: TcpConnection

    @property
    def mptcp(self) -> Any:
        """The connection's MPTCP extension when MPTCP is in use on it, else None."""
        return next((ext for ext in self.conn.extensions
                     if getattr(ext, "negotiated", False) and hasattr(ext, "carry_data")), None)


@dataclass
class Leg:
    """The connection one leg of a transfer runs on: ``sender`` and ``receiver`` ends, the leg's
    transfer (its ``done`` and its senders' numbers), and whether the sender wrote the data
    (``origin``: it closes after its last byte) or relays it (a proxy: its relay asks)."""

    sender: End
    receiver: End
    transfer: Any  # a BulkTransfer
    origin: bool
    closed: bool = False
    joined_open: int = 0  # joined subflows whose FIN exchange is under way
    ends: list[End] = field(init=False)

    def __post_init__(self) -> None:
        self.ends = [self.sender, self.receiver]


def holdable(conn: TcpConnection | None) -> bool:
    """Open both ways (its last negotiation bytes may still be unacknowledged: they will be
    when its leg ends)."""
    return conn is not None and conn.state is TcpState.ESTABLISHED


class TransferClose:
    """The close of the connections one transfer runs on (see the module doc). ``legs`` whose
    two connections are both open (:func:`holdable`) are held; ``on_closed`` is called once all held
    legs have closed (at once if none could be held). ``kept_open``: the client's connection,
    which its application kept open for the transfer (``Request.keep_open``): if no held leg
    has it, it closes now, as it would have after the response."""

    def __init__(self, legs: list[Leg], on_closed: Callable[[], None], kept_open: End | None = None) -> None:
        self.legs = [leg for leg in legs if all(holdable(end.conn) for end in leg.ends)]
        self.on_closed = on_closed
        self.finished = False
        self._joins_closed: set[int] = set()  # id() of the transfers whose joined subflows were closed
        if kept_open is not None and kept_open.conn.state is TcpState.ESTABLISHED \
                and not any(end.conn is kept_open.conn for leg in self.legs for end in leg.ends):
            kept_open.node.call(lambda now: (kept_open.conn.close(now), kept_open.node.machine.collect(kept_open.conn, now)))
        for leg in self.legs:
            for end in leg.ends:
                end.conn.hold_close()
                ext = end.mptcp
                if ext is not None:
                    ext.data_fin_on_close = True
                end.node.machine.watch_close(end.conn)
                if self.on_event not in end.node.event_handlers:
                    end.node.event_handlers.append(self.on_event)
            leg.transfer.done.callbacks.append(lambda _event, leg=leg: self._leg_done(leg))
        if not self.legs:
            self._finish()

    def _leg_done(self, leg: Leg) -> None:
        """The leg's receiving application has every byte: both ends count them, then let go."""
        subflow_bytes = leg.transfer.sender.subflows[0].snd_nxt
        size_bytes = leg.transfer.size_bytes
        # A delayed ACK still pending goes now: the receiver's next segments are its close's (in
        # Linux they would carry the acknowledgement), and the sender must not retransmit the
        # tail after its FIN for want of it.
        for subflow in leg.transfer.sender.subflows:
            if subflow.receiver.delack_timer.deadline_s is not None and not subflow.closed:
                subflow.receiver.send_ack()
        for end, sending in ((leg.receiver, False), (leg.sender, True)):
            end.node.call(lambda now, end=end, sending=sending: self._release(end, sending, leg.origin and sending,
                                                                             subflow_bytes, size_bytes, now))
        if any(not self._held_by_host(end) for end in leg.ends) and not leg.closed:
            # A host forgot its connection (a reboot): no close of its own will come, and the
            # peer's, if any, meets a RST; the leg is over.
            leg.closed = True
            self._check()

    @staticmethod
    def _held_by_host(end: End) -> bool:
        return end.node.machine.connections.get(end.conn.four_tuple) is end.conn

    @staticmethod
    def _release(end: End, sending: bool, closes: bool, subflow_bytes: int, size_bytes: int, now: float) -> None:
        conn = end.conn
        # Gone, or forgotten by its host (a reboot): the peer's FIN then meets a RST.
        if conn.state is TcpState.CLOSED or not TransferClose._held_by_host(end):
            return
        if conn.idle:
            conn.carry_stream(subflow_bytes if sending else 0, 0 if sending else subflow_bytes)
            ext = end.mptcp
            if ext is not None:
                ext.carry_data(*((subflow_bytes, size_bytes, 0, 0) if sending else (0, 0, subflow_bytes, size_bytes)))
        conn.release_close(now)
        if closes:
            conn.close(now)
        end.node.machine.collect(conn, now)

    def on_event(self, now: float, event: Any) -> None:
        """A node's event handler: a held connection is gone, so its leg has closed."""
        if not isinstance(event, WatchedConnectionClosed):
            return
        for leg in self.legs:
            closed = next((end for end in leg.ends if end.conn.four_tuple == event.four_tuple
                           and end.conn.state is TcpState.CLOSED), None)
            if not leg.closed and closed is not None:
                leg.closed = True
                self._close_joined(leg, now, from_receiver=closed is leg.receiver)
        self._check()

    def _check(self) -> None:
        if not self.finished and all(leg.closed and not leg.joined_open for leg in self.legs):
            self._finish()

    def _close_joined(self, leg: Leg, now: float, *, from_receiver: bool) -> None:
        """The connection's first subflow has closed: its joined subflows close too (Linux closes
        every subflow once the MPTCP connection is closed, net/mptcp/protocol.c
        __mptcp_close_ssk), each with a FIN from the side that has just seen the first subflow
        close, the other side's FIN and the last ACK, as light segments on the subflow's routes."""
        transfer = leg.transfer
        # Once per transfer (a proxy on the path that intercepted the connection has two legs on
        # one transfer), and only on the MPTCP connection the joins belong to.
        if id(transfer) in self._joins_closed or not any(end.mptcp is not None for end in leg.ends):
            return
        self._joins_closed.add(id(transfer))
        for index, subflow in enumerate(transfer.sender.subflows):
            join = transfer.joins[index] if index < len(transfer.joins) else None
            if index == 0 or subflow.closed or not subflow.active or (join is not None and not join.joined):
                continue
            leg.joined_open += 1
            JoinedSubflowClose(subflow, now, lambda leg=leg: self._joined_closed(leg), from_receiver=from_receiver)

    def _joined_closed(self, leg: Leg) -> None:
        leg.joined_open -= 1
        self._check()

    def _finish(self) -> None:
        self.finished = True
        for leg in self.legs:
            for end in leg.ends:
                if self.on_event in end.node.event_handlers:
                    end.node.event_handlers.remove(self.on_event)
        self.on_closed()


class _CloseEndpoint:
    """Where the segments of a joined subflow's close arrive (a route's ``deliver`` hands them to
    ``receive``); the addresses are the side's own, as the transfer's endpoints name them."""

    def __init__(self, receive: Callable[[Segment], None], side: Any) -> None:
        self.receive = receive
        self.local_ip, self.remote_ip = side.local_ip, side.remote_ip
        self.local_port, self.remote_port = side.local_port, side.remote_port


class JoinedSubflowClose:
    """The close of one joined subflow after its connection's: the side whose first subflow has
    just closed (``from_receiver``: the data's receiver, the usual case: it closed second and its
    FIN has just been acknowledged) sends FIN, the other side answers with its FIN, the first
    ACKs it; on the subflow's own routes, so queues, loss and captures see them. Data ACKs cover
    both DATA_FINs (exchanged on the first subflow before). A segment lost is not sent again:
    ``on_done`` then comes after :data:`JOINED_CLOSE_WAIT_S` (the subflow stays half closed in
    the capture)."""

    def __init__(self, subflow: Any, now: float, on_done: Callable[[], None], *, from_receiver: bool = True) -> None:
        self.subflow = subflow
        self.receiver = subflow.receiver
        self.env = subflow.env
        self.on_done = on_done
        self.done = False
        self.from_receiver = from_receiver
        self.at_receiver = _CloseEndpoint(self._at_receiver, self.receiver)
        self.at_sender = _CloseEndpoint(self._at_sender, subflow)
        self.fins_seen = 0
        self._fin(self.from_receiver, now)
        schedule_call(self.env, JOINED_CLOSE_WAIT_S, lambda _event: self._finish())

    def _fin(self, by_receiver: bool, now: float) -> None:
        self._segment(by_receiver, FLAG_FIN | FLAG_ACK, 0, now)

    def _segment(self, by_receiver: bool, flags: int, fins_received: int, now: float) -> None:
        """A segment from one side: its numbers after everything it sent (and its FIN once sent),
        acknowledging everything received (and the other side's FIN once received)."""
        receiver, subflow = self.receiver, self.subflow
        own_fin = 0 if flags & FLAG_FIN else 1  # a FIN is sent once, so anything after it comes after it
        if by_receiver:  # the receiver sends no data: sequence 0, its Data ACK after the sender's DATA_FIN
            route, to, seq = receiver.backward, self.at_sender, own_fin
            ack, data_ack = receiver.rcv_nxt + fins_received, receiver.conn.data_rcv_nxt + 1
        else:  # the sender's Data ACK covers the receiver's DATA_FIN (its stream is empty otherwise)
            route, to, seq = subflow.forward, self.at_receiver, subflow.snd_nxt + own_fin
            ack, data_ack = fins_received, 1
        route.send(Segment(receiver.ack_header_bytes, to, subflow.subflow_id, seq, 0, ack, None, 0, data_ack,
                           receiver.conn.initial_window_bytes, flags, now, None, receiver.mptcp))

    def _arrived(self, segment: Segment, at_receiver: bool) -> None:
        now = self.env.now
        if not segment.flags & FLAG_FIN:  # the last ACK: closed
            self._finish()
        elif at_receiver == self.from_receiver:  # the answer to our FIN: ACK it
            self._segment(at_receiver, FLAG_ACK, 1, now)
        else:  # the first FIN: answer with ours, acknowledging it
            self._segment(at_receiver, FLAG_FIN | FLAG_ACK, 1, now)

    def _at_receiver(self, segment: Segment) -> None:
        self._arrived(segment, True)

    def _at_sender(self, segment: Segment) -> None:
        self._arrived(segment, False)

    def _finish(self) -> None:
        if not self.done:
            self.done = True
            self.on_done()
