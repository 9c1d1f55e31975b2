"""A transfer carried inside the life of the connection its negotiation opened (docs/sim.md "Routes").

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
* the transfer counts as running (the simulation's drain) until every held pair has closed
  (one side CLOSED, :class:`mpsim.proto.host.WatchedConnectionClosed`).

Simplified: the sender's FIN leaves when its leg's receiver has the last byte (Linux sends it
with or right after the last data segment, half a round trip earlier); further MPTCP subflows
(joins, light only) end without FIN; a connection that is not idle when its leg ends (its own
bytes unacknowledged, or already closing) is released without carrying the leg's bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mpsim.proto.host import WatchedConnectionClosed
from mpsim.proto.tcp import TcpConnection, TcpState
from mpsim.sim.node import SimNode


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
        for end, sending in ((leg.receiver, False), (leg.sender, True)):
            end.node.call(lambda now, end=end, sending=sending: self._release(end, sending, leg.origin and sending,
                                                                             subflow_bytes, size_bytes, now))

    @staticmethod
    def _release(end: End, sending: bool, closes: bool, subflow_bytes: int, size_bytes: int, now: float) -> None:
        conn = end.conn
        if conn.state is TcpState.CLOSED:
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
            if not leg.closed and any(end.conn.four_tuple == event.four_tuple and end.conn.state is TcpState.CLOSED
                                      for end in leg.ends):
                leg.closed = True
        if not self.finished and all(leg.closed for leg in self.legs):
            self._finish()

    def _finish(self) -> None:
        self.finished = True
        for leg in self.legs:
            for end in leg.ends:
                if self.on_event in end.node.event_handlers:
                    end.node.event_handlers.remove(self.on_event)
        self.on_closed()
