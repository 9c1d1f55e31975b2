"""SimNode: drives one sans-I/O machine (a proto Host, converter, server, Router) under SimPy.

The same job as :class:`mpsim.proto.harness.Harness` does for all machines at once, done per
node (docs/design.md section 3): after every input (a packet from a link, the timer, a command through
:meth:`SimNode.call`) the node

* puts each ``Transmit`` of ``machine.outgoing(now)`` on the link attached to its port,
* drains ``machine.next_event()`` into the trace (and the node's event handlers),
* keeps at most one pending SimPy wake-up for ``machine.get_timer()``, never later than it.

No protocol logic lives here. Timer events are scheduled with a priority after packet
deliveries, so at equal times a packet arrives before a timer fires, as in the harness.

The timer is lazy (docs/sim.md "Performance"): SimPy cannot cancel an event, and a machine's
deadline moves on almost every packet (an RTO restarted, cleared, a TIME-WAIT expiry behind it),
so a deadline that moves *later* or goes away keeps the pending wake-up; when that wake-up comes
up early it re-checks the deadline and schedules itself again for it (or does nothing when
there is none). Only a deadline *earlier* than the pending wake-up schedules a new event; the
old one is then stale (its generation number is old) and does nothing when it comes up.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import simpy
from simpy.events import NORMAL, Event

from mpsim.sim.link import DueCall, LinkDirection
from mpsim.sim.transfer import Segment

T = TypeVar("T")

#: Timer events run after packet deliveries (NORMAL) scheduled for the same instant.
TIMER_PRIORITY = NORMAL + 1
#: A machine whose timer keeps firing at one instant without its deadline moving is broken.
MAX_TIMER_FIRES_PER_INSTANT = 10_000


class SimNode:
    """One machine, its ports and its single timer. ``trace`` (a :class:`mpsim.sim.trace.Trace`)
    receives ``(env.now, name, event)`` for every event the machine reports."""

    def __init__(self, env: simpy.Environment, name: str, machine: Any, trace: Any = None) -> None:
        self.env = env
        self.name = name
        self.machine = machine
        self.trace = trace
        self.ports: dict[str, LinkDirection] = {}  # outgoing direction per port
        #: Called as ``handler(now, event)`` for each event, after the trace got it.
        self.event_handlers: list[Callable[[float, Any], None]] = []
        self.timer_deadline_s: float | None = None  # the machine's deadline as last seen
        self.wakeup_s: float | None = None  # when the pending (current generation) wake-up comes up
        self.timers_scheduled = 0
        self.timers_fired = 0
        self.stale_timers = 0  # wake-ups superseded by an earlier one
        self.early_wakeups = 0  # wake-ups that found the deadline moved later (re-scheduled) or gone
        self._timer_generation = 0
        self._fires_at_instant = (None, 0)  # (instant, fires) to catch a machine that never moves on

    #: receive() only passes a transfer's light segments on along their route, so a Link's direction
    #: into this node does that itself, with the arrival time at hand (mpsim/sim/link.py).
    forwards_light_segments = True

    def __repr__(self) -> str:
        return f"<SimNode {self.name}>"

    def attach(self, port: str, direction: LinkDirection) -> None:
        """Send what the machine transmits on ``port`` over ``direction``."""
        if port in self.ports:
            raise ValueError(f"node {self.name!r}: port {port!r} already has a link ({self.ports[port].name!r})")
        self.ports[port] = direction

    # --- inputs -------------------------------------------------------------------------------

    def receive(self, port: str, packet: Any) -> None:
        """A packet arrived on ``port`` (links call this at the arrival time). A transfer's light
        segment never reaches the machine: its route moves it on (mpsim/sim/route.py)."""
        if packet.__class__ is Segment:
            packet.route.arrived(packet)
            return
        self.machine.receive(port, packet, self.env.now)
        self.flush()

    def call(self, command: Callable[[float], T]) -> T:
        """Run ``command(now)`` on the machine at ``env.now``, then flush; returns its result.

        For workload processes: ``node.call(lambda now: client.connect(request, now))``.
        """
        result = command(self.env.now)
        self.flush()
        return result

    def _on_timer(self, generation: int, _event: Event) -> None:
        if generation != self._timer_generation:
            self.stale_timers += 1
            return
        self.wakeup_s = None
        deadline_s = self.timer_deadline_s
        now = self.env.now
        if deadline_s is None or deadline_s > now:
            # The deadline went away or moved later since this wake-up was scheduled.
            self.early_wakeups += 1
            if deadline_s is not None:
                self._schedule_wakeup(deadline_s, now)
            return
        instant, fires = self._fires_at_instant
        fires = fires + 1 if instant == now else 1
        if fires > MAX_TIMER_FIRES_PER_INSTANT:
            raise RuntimeError(f"node {self.name!r}: timer fired {fires} times at t={now} without its deadline moving")
        self._fires_at_instant = (now, fires)
        self.timer_deadline_s = None  # this event is spent: a deadline still due needs a new one
        self.timers_fired += 1
        self.machine.handle_timer(now)
        self.flush()

    # --- outputs ------------------------------------------------------------------------------

    def flush(self) -> None:
        """Move the machine's packets onto links, its events into the trace, and re-arm its timer."""
        now = self.env.now
        machine = self.machine
        for transmit in machine.outgoing(now):
            direction = self.ports.get(transmit.port)
            if direction is None:
                raise KeyError(f"node {self.name!r} sent on port {transmit.port!r}, which has no link "
                               f"(linked ports: {', '.join(map(repr, self.ports)) or 'none'})")
            direction.send(transmit.packet)
        while (event := machine.next_event()) is not None:
            if self.trace is not None:
                self.trace.event(now, self.name, event)
            for handler in self.event_handlers:
                handler(now, event)
        deadline_s = machine.get_timer()
        if deadline_s != self.timer_deadline_s:
            self.timer_deadline_s = deadline_s
            wakeup_s = self.wakeup_s
            # A later deadline (or none) keeps the pending wake-up, which re-checks when it comes up.
            if deadline_s is not None and (wakeup_s is None or deadline_s < wakeup_s):
                self._schedule_wakeup(deadline_s, now)

    def _schedule_wakeup(self, deadline_s: float, now: float) -> None:
        self._timer_generation += 1  # whatever wake-up was pending is stale from now on
        delay_s = deadline_s - now
        # A deadline in the past fires at once; the delay is never negative, so DueCall directly.
        if delay_s > 0.0:
            self.wakeup_s = deadline_s
        else:
            self.wakeup_s, delay_s = now, 0.0
        DueCall(self.env, delay_s, TIMER_PRIORITY, partial(self._on_timer, self._timer_generation))
        self.timers_scheduled += 1

    @property
    def live_timers(self) -> int:
        """Pending wake-ups that will act when they come up (fire, or re-check a deadline that
        moved later): 0 or 1, by construction."""
        return int(self.wakeup_s is not None)
