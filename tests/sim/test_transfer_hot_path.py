"""The per-packet path of mpsim/sim/transfer.py builds its data segments and scoreboard records
without calling their classes (docs/sim.md, "Performance"): they must be the objects the
constructors make, every slot set alike."""

from __future__ import annotations

import inspect

import simpy

from mpsim.sim.link import LinkDirection
from mpsim.sim.transfer import BulkTransfer, Segment, _TxRecord


class _Keep:
    """A link trace that keeps every packet offered (it also puts the direction on its general path)."""

    record_packets = True

    def __init__(self) -> None:
        self.sent: list = []

    def packet(self, time_s, direction, kind, packet, packet_id, reason=None):
        if kind == "sent":
            self.sent.append(packet)


def _set_slots(obj) -> dict:
    return {name: getattr(obj, name) for name in type(obj).__slots__ if hasattr(obj, name)}


def _rebuilt(obj):
    """The same values through the class's own constructor."""
    names = list(inspect.signature(type(obj).__init__).parameters)[1:]
    return type(obj)(*[getattr(obj, name) for name in names])


def test_data_segments_and_records_are_what_the_constructors_make():
    env = simpy.Environment()
    keep = _Keep()
    forward = LinkDirection(env, "f", delay_s=0.005, rate_bps=50e6, trace=keep)
    backward = LinkDirection(env, "b", delay_s=0.005, rate_bps=50e6)
    transfer = BulkTransfer(env, [(forward, backward)], 200_000)
    subflow = transfer.sender.subflows[0]
    records = []
    env.run(until=0.012)  # the first flight sent, none acknowledged yet: the records are all there
    records = list(subflow.rtx)
    env.run()
    assert transfer.result().completed
    data = [segment for segment in keep.sent if segment.payload_bytes]
    assert len(data) == len(range(0, 200_000, subflow.payload_max_bytes)) and records
    for built in data + records:
        twin = _rebuilt(built)
        if isinstance(built, _TxRecord):  # what the scoreboard changes after sending, as it was
            for name in ("sacked", "lost", "retrans", "ever_retrans", "rtx_high_seq"):
                setattr(twin, name, getattr(built, name))
        assert _set_slots(built) == _set_slots(twin), type(built).__name__
    assert set(_set_slots(data[0])) == set(Segment.__slots__) - {"route", "hop", "flow", "join_option"}
    assert set(_set_slots(records[0])) == set(_TxRecord.__slots__)
