"""A transfer through the converter's relay: two TCP/MPTCP legs and a relay buffer between them.

:class:`RelayedTransfer` moves ``size_bytes`` from an origin to a final receiver as a
transport converter (RFC 8803) or any terminating proxy moves them: the *client leg* runs
between the client and the converter (MPTCP over one ``(forward, backward)`` pair per client
path, or TCP over one), the *server leg* between the converter and the server (plain TCP, or
MPTCP when the converter offers it upstream), each a :class:`~mpsim.sim.transfer.BulkTransfer`
with its own congestion control, loss recovery, send and receive buffers. ``direction``
"upload" sends from the client (client leg upstream of the relay), "download" from the server
(server leg upstream).

Between the legs the converter's relay copies what the upstream leg's receiving socket holds
in order into a relay buffer of ``relay_buffer_bytes``, and from there into the downstream
leg's sending socket as far as its send buffer has room (docs/sim.md, "The relay"):

* the upstream socket's bytes stay unread while the relay buffer is full, so its receive
  window shrinks by them and closes once the receive buffer is full too (back-pressure: the
  origin then waits, with a zero-window probe timer, instead of retransmitting);
* the downstream sender takes bytes as its send buffer frees (each push asks the relay);
* with a CPU (``cpu``, ``cpu_per_byte_s``: :mod:`mpsim.sim.cpu`) every chunk the relay copies is
  a job of ``length x cpu_per_byte_s`` on the converter's cores, one job at a time per relayed
  connection (one relay thread per connection); the chunk reaches the relay buffer when its
  job ends. The chunk is what the upstream socket holds unread when the relay wakes, at most
  the relay buffer's free space.

The default relay buffer is what the project's live converter holds between its two sockets
(``mpsim/live/relay.py``): a :class:`~mpsim.live.relay.Pump` reads at most one 64 KiB chunk
(a 64 KiB ``BufferPool`` buffer, or a pipe of the kernel's default 16 pages when splicing) and
reads again only once it has written it all; the rest of what the converter holds is the two
sockets' own buffers, which the legs model (the upstream leg's ``rcv_buf_bytes``, the
downstream leg's ``snd_buf_bytes``).

Simplified: the relay buffer is a byte count, filled and drained continuously (the live pump
alternates between one full chunk and empty); the relay wakes in the same instant as an
in-order arrival (no scheduling latency beyond the CPU job); the downstream sender applies
Nagle's algorithm to what the relay writes but not Linux's Minshall refinement or autocorking
(:mod:`mpsim.sim.transfer`, "Composing transfers"); the end of the stream needs no FIN or
DATA_FIN here (in a simulation the negotiated connections close after it,
mpsim/sim/transfer_close.py); both legs start at the same instant (no connection set-up,
which the negotiation models).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import simpy

from mpsim.sim.cpu import Cpu
from mpsim.sim.link import LinkDirection, schedule_call
from mpsim.sim.transfer import BulkTransfer, TransferRecord

#: The live converter's relay holds one 64 KiB chunk per direction (mpsim/live/relay.py Pump,
#: BufferPool(chunk_bytes=65536); a splice pipe's default 16 pages).
DEFAULT_RELAY_BUFFER_BYTES = 65536
DIRECTIONS = ("upload", "download")
#: What ``client_options`` / ``server_options`` (and the common keywords) may set for one leg:
#: BulkTransfer's keywords, less those RelayedTransfer sets itself.
LEG_OPTIONS = frozenset(inspect.signature(BulkTransfer).parameters) - {
    "env", "paths", "size_bytes", "mptcp", "payload", "subflow_start_s", "name", "source", "sink"}


class _Relay:
    """The converter's relay between the two legs: the upstream receiver's sink and the
    downstream sender's source (the protocol of ``BulkTransfer(source=..., sink=...)``)."""

    def __init__(self, env: simpy.Environment, capacity_bytes: int, cpu: Cpu | None, cpu_per_byte_s: float,
                 store: bytearray | None) -> None:
        self.env = env
        self.capacity_bytes = capacity_bytes
        self.cpu = cpu
        self.cpu_per_byte_s = cpu_per_byte_s
        self.store = store  # the stream's bytes, when the transfer carries a payload
        self.upstream: BulkTransfer | None = None
        self.downstream: BulkTransfer | None = None
        self.held_bytes = 0  # copied into the relay buffer, not yet written downstream
        self.copying_bytes = 0  # read from upstream, in a CPU job
        self.high_water_bytes = 0
        self.copied_bytes = 0
        self.written_bytes = 0
        self.jobs = 0
        self._wake_pending = False

    # --- sink: the upstream socket has new in-order bytes ----------------------------------------

    def on_data(self, receiver: Any, payload: memoryview | None, offset: int, length: int) -> None:
        if self.store is not None and payload is not None:
            self.store[offset:offset + length] = payload
        self._wake()

    # --- source: the downstream sender has room ------------------------------------------------------

    def pull(self, sender: Any, room_bytes: int) -> int:
        take = self.held_bytes if self.held_bytes < room_bytes else room_bytes
        if take > 0:
            self.held_bytes -= take
            self.written_bytes += take
            if self.upstream is not None and self.upstream.receiver.unread_bytes:
                self._wake()  # room again in the relay buffer: read on
        return take

    # --- the relay itself --------------------------------------------------------------------------------

    def _wake(self) -> None:
        """Run the relay in this instant, after the packet handling that woke it (an application
        reads after the kernel's receive path, not inside it)."""
        if not self._wake_pending:
            self._wake_pending = True
            schedule_call(self.env, 0, self._run)

    def _run(self, _event: Any) -> None:
        self._wake_pending = False
        self._copy()

    def _copy(self) -> None:
        """Read what the upstream socket holds into the relay buffer's free space, then offer
        the relay buffer to the downstream sender."""
        if self.copying_bytes:
            return  # the relay thread is busy with the previous chunk
        receiver = self.upstream.receiver
        length = min(receiver.unread_bytes, self.capacity_bytes - self.held_bytes)
        if length > 0:
            self.copied_bytes += length
            cost_s = length * self.cpu_per_byte_s
            # The relay buffer holds the chunk before the read's window update leaves.
            if self.cpu is not None and cost_s > 0:
                self.copying_bytes = length
                self.jobs += 1
                self._mark_high_water()
                receiver.consume(length)
                self.cpu.after(cost_s, lambda: self._copied(length))
                return
            self.held_bytes += length
            self._mark_high_water()
            receiver.consume(length)
        if self.held_bytes:
            self.downstream.sender.push(self.env.now)

    def _copied(self, length: int) -> None:
        self.copying_bytes = 0
        self.held_bytes += length
        self.downstream.sender.push(self.env.now)
        self._copy()

    def _mark_high_water(self) -> None:
        occupied = self.held_bytes + self.copying_bytes
        if occupied > self.high_water_bytes:
            self.high_water_bytes = occupied


@dataclass(frozen=True)
class RelayedTransferRecord:
    """The outcome of one relayed transfer: end to end, then per leg.

    ``duration_s`` runs from the start (the origin's first byte) to the last byte read by the
    final receiver (or to the time of the query if unfinished); ``goodput_bps`` is
    ``bytes_delivered * 8 / duration_s``. ``subflows`` and ``subflow_bytes`` are the client
    leg's; ``retransmissions`` and ``timeouts`` add both legs'. ``relay_high_water_bytes`` is
    the most the relay buffer held (CPU jobs included); ``relay_cpu_jobs`` the chunks copied on
    the CPU. ``client_window_probes`` / ``server_window_probes`` count the zero-window probes
    each leg's sender sent. ``client_leg`` / ``server_leg`` are the legs' own records (their
    ``duration_s`` ends when the leg's receiving socket has every byte).
    """

    size_bytes: int
    bytes_delivered: int
    completed: bool
    start_s: float
    duration_s: float
    goodput_bps: float
    direction: str
    mptcp: bool
    server_mptcp: bool
    subflows: int
    retransmissions: int
    timeouts: int
    subflow_bytes: tuple[int, ...]
    relay_buffer_bytes: int
    relay_high_water_bytes: int
    relay_cpu_jobs: int
    client_window_probes: int
    server_window_probes: int
    payload_sha256: str | None
    client_leg: TransferRecord
    server_leg: TransferRecord


class RelayedTransfer:
    """Move ``size_bytes`` between a client and a server through the converter's relay,
    starting at ``env.now`` (module doc).

    ``client_paths``: ``(towards the converter, back to the client)`` direction pairs, one per
    client path (MPTCP, ``mptcp=True``) or one (TCP). ``server_paths``: ``(towards the server,
    back to the converter)``, one (TCP) or one per path when ``server_mptcp``. Any object with a
    direction's ``send``, ``name`` and ``deliver`` will do (a link direction, a
    :class:`~mpsim.sim.route.Route`). ``direction``: "upload" or "download". The keywords
    ``cc`` ... ``buffers`` apply to both legs as :class:`~mpsim.sim.transfer.BulkTransfer` takes
    them; ``client_options`` / ``server_options`` override them per leg (a leg's
    ``snd_buf_bytes`` is its sender's, ``rcv_buf_bytes`` its receiver's: on an upload the
    converter's receive buffer is the client leg's ``rcv_buf_bytes``). ``coupled`` applies to an
    MPTCP leg only (a TCP leg runs Reno if a coupled control was asked for). ``subflow_start_s``:
    the client leg's subflow starts. ``relay_buffer_bytes``: the relay's own buffer.
    ``cpu``/``cpu_per_byte_s``: the converter's relay CPU, a job per chunk copied. ``payload``:
    bytes carried for real; the final receiver hashes what it reads.
    """

    def __init__(self, env: simpy.Environment, client_paths: Sequence[tuple[LinkDirection, LinkDirection]],
                 server_paths: Sequence[tuple[LinkDirection, LinkDirection]], size_bytes: int, *,
                 direction: str = "upload", mptcp: bool = True, server_mptcp: bool = False, cc: str = "cubic",
                 coupled: str = "none", relay_buffer_bytes: int = DEFAULT_RELAY_BUFFER_BYTES,
                 cpu: Cpu | None = None, cpu_per_byte_s: float = 0.0, payload: bytes | None = None,
                 subflow_start_s: Sequence[float] | None = None, client_options: dict | None = None,
                 server_options: dict | None = None, name: str = "relayed", **common: Any) -> None:
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        if type(relay_buffer_bytes) is not int or relay_buffer_bytes < 1:
            raise ValueError(f"relay_buffer_bytes must be a positive int, got {relay_buffer_bytes!r}")
        if not (isinstance(cpu_per_byte_s, (int, float)) and cpu_per_byte_s >= 0):
            raise ValueError(f"cpu_per_byte_s must be >= 0, got {cpu_per_byte_s!r}")
        if cpu_per_byte_s > 0 and cpu is None:
            raise ValueError("cpu_per_byte_s > 0 needs a cpu to run the relay's jobs on")
        for label, options in (("keyword", common), ("client_options", client_options or {}),
                               ("server_options", server_options or {})):
            unknown = sorted(set(options) - LEG_OPTIONS)
            if unknown:
                raise ValueError(f"RelayedTransfer: unknown {label} {', '.join(unknown)}; "
                                 f"a leg takes {', '.join(sorted(LEG_OPTIONS))}")
        client_paths, server_paths = list(client_paths), list(server_paths)
        if direction == "download":  # data flows from the server: each pair's reverse carries it
            client_paths = [(back, forth) for forth, back in client_paths]
            server_paths = [(back, forth) for forth, back in server_paths]
        # A payload of the wrong length is refused by the leg that sends it (BulkTransfer).
        self.env = env
        self.name = name
        self.size_bytes = size_bytes
        self.direction = direction
        self.mptcp = mptcp
        self.server_mptcp = server_mptcp
        self.relay_buffer_bytes = relay_buffer_bytes
        self.start_s = env.now
        store = bytearray(size_bytes) if payload is not None else None
        self.relay = _Relay(env, relay_buffer_bytes, cpu, float(cpu_per_byte_s), store)

        def leg_options(leg_mptcp: bool, overrides: dict | None) -> dict:
            options = {"cc": cc, "coupled": coupled, **common, **(overrides or {})}
            if not leg_mptcp and options["coupled"] != "none":
                options["coupled"] = "none"  # RFC 6356 reduces to Reno on a single path
                options["cc"] = "reno"
            return options

        client = leg_options(mptcp, client_options)
        server = leg_options(server_mptcp, server_options)
        if direction == "upload":
            self.client_leg = BulkTransfer(env, client_paths, size_bytes, mptcp=mptcp, payload=payload,
                                           subflow_start_s=subflow_start_s, sink=self.relay, name=f"{name}.client",
                                           **client)
            self.server_leg = BulkTransfer(env, server_paths, size_bytes, mptcp=server_mptcp, payload=store,
                                           source=self.relay, name=f"{name}.server", **server)
            self.relay.upstream, self.relay.downstream = self.client_leg, self.server_leg
        else:
            self.server_leg = BulkTransfer(env, server_paths, size_bytes, mptcp=server_mptcp, payload=payload,
                                           sink=self.relay, name=f"{name}.server", **server)
            self.client_leg = BulkTransfer(env, client_paths, size_bytes, mptcp=mptcp, payload=store,
                                           subflow_start_s=subflow_start_s, source=self.relay,
                                           name=f"{name}.client", **client)
            self.relay.upstream, self.relay.downstream = self.server_leg, self.client_leg

    @property
    def done(self) -> simpy.Event:
        """Succeeds (with the finish time) when the final receiver has read the last byte."""
        return self.relay.downstream.done

    def result(self) -> RelayedTransferRecord:
        """The record so far: complete once ``done`` has triggered."""
        final = self.relay.downstream.receiver
        completed = final.finish_s is not None
        end_s = final.finish_s if completed else self.env.now
        duration_s = end_s - self.start_s
        delivered = final.data_rcv_nxt
        client, server = self.client_leg.result(), self.server_leg.result()
        return RelayedTransferRecord(
            size_bytes=self.size_bytes, bytes_delivered=delivered, completed=completed, start_s=self.start_s,
            duration_s=duration_s, goodput_bps=delivered * 8 / duration_s if duration_s > 0 else 0.0,
            direction=self.direction, mptcp=self.mptcp, server_mptcp=self.server_mptcp, subflows=client.subflows,
            retransmissions=client.retransmissions + server.retransmissions,
            timeouts=client.timeouts + server.timeouts, subflow_bytes=client.subflow_bytes,
            relay_buffer_bytes=self.relay_buffer_bytes, relay_high_water_bytes=self.relay.high_water_bytes,
            relay_cpu_jobs=self.relay.jobs, client_window_probes=self.client_leg.sender.window_probes_sent,
            server_window_probes=self.server_leg.sender.window_probes_sent,
            payload_sha256=final.hasher.hexdigest() if final.hasher is not None else None,
            client_leg=client, server_leg=server,
        )
