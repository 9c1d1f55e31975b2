"""Every legal transition exercised, every illegal input rejected without changing state.

Coverage: the ``_move`` of every machine (TcpConnection, the MPTCP extensions, the RFC 8803
ConverterSession, the MP_CONVERT and SOCKS5 sessions) is wrapped to record (machine, from, to)
while the whole truth table (mpsim.proto.truth_table.all_cases) and the targeted scenarios
below run; the recorded edges must be the edges of each machine's table. The targeted scenarios
exist for what the table never does (simultaneous close, FIN-WAIT-2 timeout, a SOCKS5 client that
is not one, ...); each declares the edges it is for, and is checked alone to take them.

Illegal inputs: the relay sessions take downstream outcomes only in the states where they can
happen (RelaySession's docstrings: connected while connecting, a failure while connecting or
relaying, data and FIN while relaying); elsewhere they raise LocalProtocolError and change
nothing (state, pending decisions, timer, buffers, converter counters); in DONE every input is
ignored. TcpConnection's commands raise LocalProtocolError, or are the documented no-ops, in the
states where they make no sense, and leave state, sequence numbers, packets, events and the timer
alone.
"""

from __future__ import annotations

import copy
import dataclasses
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

import pytest

from mpsim.proto.truth_table import VARIANTS, all_cases, table_middleboxes, table_servers
from mpsim.proto import relay
from mpsim.proto.convert import SESSION_TRANSITIONS, ConvertClientExchange, Converter, ConverterPolicy
from mpsim.proto.convert import SessionState as CS
from mpsim.proto.errors import LocalProtocolError
from mpsim.proto.events import FallbackReason
from mpsim.proto.harness import Harness
from mpsim.proto.host import Acceptance, Host
from mpsim.proto.mp_convert_proxy import (
    MP_CONVERT_SESSION_TRANSITIONS,
    MpConvertProxyPolicy,
    MpConvertRequest,
    MpConvertSession,
    SignallingMode,
)
from mpsim.proto.mp_convert_proxy import MpConvertSessionState as MS
from mpsim.proto.mptcp import TRANSITIONS as MPTCP_TRANSITIONS
from mpsim.proto.mptcp import MptcpClientExtension, MptcpPolicy, MptcpServerExtension, MptcpState, _MptcpExtension
from mpsim.proto.socks5_proxy import SOCKS5_SESSION_TRANSITIONS, Socks5ProxyPolicy, Socks5Session
from mpsim.proto.socks5_proxy import Socks5SessionState as KS
from mpsim.proto.tcp import (
    TCP_TRANSITIONS,
    Closed,
    CloseReason,
    DataReceived,
    TcpConnection,
    TcpPolicy,
    TcpState,
    TimedOut,
)
from mpsim.wire.options import MaximumSegmentSize
from mpsim.wire.segment import TcpFlags
from mpsim.wire.socks5 import Socks5Command, Socks5Greeting, Socks5Request

T = TcpState
CLIENT_ADDR, SERVER_ADDR = IPv4Address("198.18.0.1"), IPv4Address("198.18.3.1")
CLIENT_PORT, SERVER_PORT = 40000, 80
NOW_S = 1.0

TABLES: dict[str, dict] = {
    "tcp": TCP_TRANSITIONS,
    "mptcp": MPTCP_TRANSITIONS,
    "ConverterSession": SESSION_TRANSITIONS,
    "MpConvertSession": MP_CONVERT_SESSION_TRANSITIONS,
    "Socks5Session": SOCKS5_SESSION_TRANSITIONS,
}



def table_edges(kind: str) -> set:
    return {(a, b) for a, targets in TABLES[kind].items() for b in targets}


def _kind(machine: Any) -> str:
    if isinstance(machine, TcpConnection):
        return "tcp"
    if isinstance(machine, _MptcpExtension):
        return "mptcp"
    return type(machine).__name__


class Recorder:
    """Wraps every ``_move`` so that each state change is recorded as (kind, from, to) and, for
    MPTCP falls back, with the reason (set by ``_fall_back`` right after the move)."""

    def __init__(self) -> None:
        self.edges: set[tuple[str, Any, Any]] = set()
        self.fallbacks: list[tuple[MptcpState, _MptcpExtension]] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> Recorder:
        for cls in (TcpConnection, _MptcpExtension, relay.RelaySession):
            monkeypatch.setattr(cls, "_move", self._wrap(cls._move))
        return self

    def _wrap(self, original: Callable) -> Callable:
        def recording_move(machine: Any, state: Any) -> None:
            before = machine.state
            original(machine, state)
            self.edges.add((_kind(machine), before, state))
            if state is MptcpState.FALLEN_BACK:
                self.fallbacks.append((before, machine))
        return recording_move

    def of(self, kind: str) -> set:
        return {(a, b) for k, a, b in self.edges if k == kind}

    def fallback_causes(self) -> set[tuple[MptcpState, FallbackReason]]:
        return {(before, ext.fallback_reason) for before, ext in self.fallbacks}


# --- TCP connections in every state ------------------------------------------------------------------


class Pair:
    """A client and a server connection back to back, no delay: packets move only when asked."""

    def __init__(self, *, withhold_synack: bool = False, policy: TcpPolicy = TcpPolicy(), now: float = 0.0) -> None:
        self.client = TcpConnection.active(CLIENT_ADDR, CLIENT_PORT, SERVER_ADDR, SERVER_PORT, iss=1000,
                                           policy=policy, now=now)
        syn = self.client.pull_packets()[0]
        self.server = TcpConnection.passive(syn, iss=5000, policy=policy, now=now, withhold_synack=withhold_synack)

    @staticmethod
    def deliver(src: TcpConnection, dst: TcpConnection, now: float, keep: Callable = lambda seg: True) -> list:
        packets = [p for p in src.pull_packets() if keep(p.segment)]
        for packet in packets:
            dst.receive(packet, now)
        return packets

    def to_server(self, now: float = NOW_S, keep: Callable = lambda seg: True) -> list:
        return self.deliver(self.client, self.server, now, keep)

    def to_client(self, now: float = NOW_S, keep: Callable = lambda seg: True) -> list:
        return self.deliver(self.server, self.client, now, keep)

    def handshake(self) -> Pair:
        self.to_client()
        self.to_server()
        assert self.client.state is self.server.state is T.ESTABLISHED
        return self


def _fin_wait_2_pair() -> Pair:
    """Client FIN-WAIT-2, server CLOSE-WAIT."""
    pair = Pair().handshake()
    pair.client.close(NOW_S)
    pair.to_server()
    pair.to_client()
    return pair


def _closing_pair() -> Pair:
    """Both closed at once, the FINs crossed: both CLOSING, their ACKs not yet sent on."""
    pair = Pair().handshake()
    pair.client.close(NOW_S)
    pair.server.close(NOW_S)
    from_client, from_server = pair.client.pull_packets(), pair.server.pull_packets()
    for packet in from_client:
        pair.server.receive(packet, NOW_S)
    for packet in from_server:
        pair.client.receive(packet, NOW_S)
    return pair


def _last_ack() -> TcpConnection:
    pair = _fin_wait_2_pair()
    pair.server.close(NOW_S)
    return pair.server


def _time_wait() -> TcpConnection:
    pair = _fin_wait_2_pair()
    pair.server.close(NOW_S)
    pair.to_client()
    return pair.client


def _closed() -> TcpConnection:
    conn = Pair().handshake().client
    conn.abort(NOW_S)
    return conn


def _syn_received_after_close() -> TcpConnection:
    conn = Pair().server
    conn.close(NOW_S)
    return conn


#: Builders of a connection in each state (labels: the state, or the state and what matters more).
TCP_IN: dict[str, Callable[[], TcpConnection]] = {
    "CLOSED": _closed,
    "SYN_SENT": lambda: Pair().client,
    "SYN_RECEIVED": lambda: Pair().server,
    "SYN_RECEIVED withheld": lambda: Pair(withhold_synack=True).server,
    "SYN_RECEIVED after close": _syn_received_after_close,
    "ESTABLISHED": lambda: Pair().handshake().client,
    "FIN_WAIT_1": lambda: (p := Pair().handshake(), p.client.close(NOW_S))[0].client,
    "FIN_WAIT_2": lambda: _fin_wait_2_pair().client,
    "CLOSE_WAIT": lambda: _fin_wait_2_pair().server,
    "CLOSING": lambda: _closing_pair().client,
    "LAST_ACK": _last_ack,
    "TIME_WAIT": _time_wait,
}


def test_the_builders_cover_every_tcp_state():
    built = {label: TCP_IN[label]() for label in TCP_IN}
    assert all(conn.state.name == label.split()[0] for label, conn in built.items())
    assert {conn.state for conn in built.values()} == set(TcpState)


# --- targeted scenarios ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    run: Callable[[], None]
    targets: frozenset  # (kind, from, to) edges the scenario is for


SCENARIOS: list[Scenario] = []


def scenario(*targets: tuple[str, Any, Any]):
    def register(run: Callable[[], None]) -> Callable[[], None]:
        SCENARIOS.append(Scenario(run.__name__, run, frozenset(targets)))
        return run
    return register


@scenario(("tcp", T.FIN_WAIT_1, T.CLOSING), ("tcp", T.CLOSING, T.TIME_WAIT))
def tcp_simultaneous_close():
    pair = _closing_pair()
    assert pair.client.state is pair.server.state is T.CLOSING
    pair.to_server()
    pair.to_client()
    assert pair.client.state is pair.server.state is T.TIME_WAIT
    assert pair.client.get_timer() == NOW_S + TcpPolicy().time_wait_s


@scenario(("tcp", T.FIN_WAIT_1, T.FIN_WAIT_2), ("tcp", T.FIN_WAIT_2, T.TIME_WAIT))
def tcp_fin_and_ack_of_our_fin_in_one_segment():
    """The server's ACK of our FIN is lost; its own FIN then ACKs ours: RFC 9293 3.10.7.4 (FIN
    bit, FIN-WAIT-1: "if our FIN has been ACKed (perhaps in this segment), enter TIME-WAIT")."""
    pair = Pair().handshake()
    pair.client.close(NOW_S)
    pair.to_server()
    assert pair.server.state is T.CLOSE_WAIT
    pair.server.pull_packets()  # its ACK of our FIN is lost
    pair.server.close(NOW_S)
    (fin,) = pair.to_client()
    assert fin.segment.flags & TcpFlags.FIN and fin.segment.ack == pair.client.snd_nxt
    assert pair.client.state is T.TIME_WAIT


@scenario(("tcp", T.SYN_RECEIVED, T.ESTABLISHED), ("tcp", T.ESTABLISHED, T.FIN_WAIT_1))
def tcp_close_in_syn_received_sends_fin_after_the_handshake():
    pair = Pair()
    pair.server.close(NOW_S)
    (synack,) = pair.to_client()  # no FIN yet: it waits for the handshake
    assert pair.server.state is T.SYN_RECEIVED and synack.segment.flags == TcpFlags.SYN | TcpFlags.ACK
    pair.to_server()
    assert pair.server.state is T.FIN_WAIT_1
    assert [p.segment.flags & TcpFlags.FIN for p in pair.server.pull_packets()] == [TcpFlags.FIN]


@scenario(("tcp", T.FIN_WAIT_2, T.CLOSED))
def tcp_fin_wait_2_timeout():
    conn = _fin_wait_2_pair().client
    conn.pull_events()
    assert conn.get_timer() == NOW_S + TcpPolicy().fin_wait_2_timeout_s
    conn.handle_timer(conn.get_timer() - 0.001)
    assert conn.state is T.FIN_WAIT_2
    conn.handle_timer(conn.get_timer())
    assert conn.state is T.CLOSED and conn.pull_events() == [TimedOut("fin_wait_2"), Closed(CloseReason.TIMED_OUT)]


@scenario(("tcp", T.CLOSE_WAIT, T.CLOSED))
def tcp_reset_in_close_wait():
    pair = _fin_wait_2_pair()
    pair.client.abort(NOW_S)  # RST at the server's RCV.NXT
    pair.to_server()
    assert pair.server.state is T.CLOSED and pair.server.pull_events()[-1] == Closed(CloseReason.RESET_RECEIVED)


@scenario(("tcp", T.CLOSING, T.CLOSED))
def tcp_abort_in_closing():
    conn = _closing_pair().client
    conn.pull_packets()
    conn.abort(NOW_S)
    (rst,) = conn.pull_packets()
    assert conn.state is T.CLOSED and rst.segment.flags == TcpFlags.RST


def _socks5_session() -> Socks5Session:
    return Socks5Session((CLIENT_ADDR, CLIENT_PORT), Socks5ProxyPolicy(), NOW_S)


@scenario(("Socks5Session", KS.EXPECT_GREETING, KS.DONE))
def socks5_client_that_speaks_socks4():
    session = _socks5_session()
    session.receive_upstream(b"\x04\x01\x00\x50" + SERVER_ADDR.packed + b"\x00", NOW_S)
    assert session.state is KS.DONE and _drain(session) == [relay.CloseUpstream()]


@scenario(("Socks5Session", KS.EXPECT_REQUEST, KS.DONE))
def socks5_bind_request_refused():
    session = _socks5_session()
    session.receive_upstream(Socks5Greeting((0,)).encode(), NOW_S)
    session.receive_upstream(Socks5Request(SERVER_ADDR, SERVER_PORT, Socks5Command.BIND).encode(), NOW_S)
    decisions = _drain(session)
    assert session.state is KS.DONE and decisions[-1] == relay.CloseUpstream()
    assert decisions[1].data[1] == 0x07  # REP: command not supported


class _Responder:
    """A server owner that answers every request with ``b"ok"``."""

    def on_tcp_event(self, host: Host, conn: TcpConnection, event: Any, now: float) -> None:
        if isinstance(event, DataReceived):
            conn.send(b"ok", now)


class _MptcpListener:
    def __init__(self, policy: MptcpPolicy) -> None:
        self.policy = policy
        self.ext: MptcpServerExtension | None = None

    def on_syn(self, host: Host, packet: Any, now: float) -> Acceptance:
        self.ext = MptcpServerExtension(rng=host.rng, mib=host.mib, policy=self.policy)
        return Acceptance(owner=_Responder(), extensions=(self.ext,))


def _corrupt_first_client_data():
    """An ALG that rewrites the payload of the first data segment and leaves the options alone."""
    done = []

    def packet_filter(packet, now):
        seg = packet.segment
        if done or not seg.payload or seg.flags & TcpFlags.SYN:
            return [packet]
        done.append(seg)
        return [dataclasses.replace(packet, segment=dataclasses.replace(seg, payload=seg.payload.upper()))]
    return packet_filter


@scenario(("mptcp", MptcpState.NEGOTIATED, MptcpState.FALLEN_BACK))
def mptcp_checksum_failure_draws_mp_fail():
    """With checksums, a payload rewrite is caught by the DSS checksum: the server falls back and
    sends MP_FAIL, the client falls back on receiving it (RFC 8684 3.7)."""
    harness = Harness()
    client = harness.add("client", Host("client", {"eth0": CLIENT_ADDR}, rng=random.Random(1)))
    server = harness.add("server", Host("server", {"eth0": SERVER_ADDR}, rng=random.Random(2)))
    policy = MptcpPolicy(checksums=True)
    listener = _MptcpListener(policy)
    server.listen(SERVER_PORT, listener)
    harness.link("client", "eth0", "server", "eth0", 0.01, a_to_b=[_corrupt_first_client_data()])
    ext = MptcpClientExtension(rng=client.rng, mib=client.mib, policy=policy)
    conn = client.open(_Responder(), CLIENT_ADDR, SERVER_ADDR, SERVER_PORT, 0.0, extensions=(ext,))
    harness.run(0.5)
    conn.send(b"hello", harness.now)
    client.collect(conn, harness.now)
    harness.run(1.0)
    assert ext.fallback_reason is listener.ext.fallback_reason is FallbackReason.CHECKSUM_FAILURE


def _drain(session: relay.RelaySession) -> list:
    decisions = []
    while (decision := session.next_decision()) is not None:
        decisions.append(decision)
    return decisions


def truth_table():
    cases = all_cases(rngs=random.Random)
    assert len(cases) == len(VARIANTS) * len(table_middleboxes()) * len(table_servers()) and all(case.record is not None for case in cases)


# --- coverage ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exercised() -> Recorder:
    """Every edge taken by the truth table and the targeted scenarios together."""
    recorder = Recorder()
    with pytest.MonkeyPatch.context() as monkeypatch:
        recorder.install(monkeypatch)
        truth_table()
        for each in SCENARIOS:
            each.run()
    return recorder


def _missing_message(kind: str, missing: set) -> str:
    return f"{kind}: table edges never taken: " + ", ".join(sorted(f"{a.name} -> {b.name}" for a, b in missing))


@pytest.mark.parametrize("kind", list(TABLES))
def test_every_table_edge_is_exercised(exercised, kind):
    missing = table_edges(kind) - exercised.of(kind)
    assert not missing, _missing_message(kind, missing)


def test_both_causes_of_a_negotiated_mptcp_connection_falling_back_are_exercised(exercised):
    """NEGOTIATED -> FALLEN_BACK has two documented causes: options missing on data (no DSS, an
    infinite mapping) and a DSS checksum failure (MP_FAIL)."""
    causes = {reason for before, reason in exercised.fallback_causes() if before is MptcpState.NEGOTIATED}
    assert causes == {FallbackReason.DSS_MISSING, FallbackReason.CHECKSUM_FAILURE}


@pytest.mark.parametrize("each", SCENARIOS, ids=lambda s: s.name)
def test_targeted_scenario_takes_its_edges(monkeypatch, each):
    recorder = Recorder().install(monkeypatch)
    each.run()
    assert each.targets <= recorder.edges, f"not taken: {each.targets - recorder.edges}"


def test_close_in_syn_received_and_fin_with_ack_pass_through_an_intermediate_state(monkeypatch):
    """RFC 9293 Figure 5 draws SYN-RECEIVED -> FIN-WAIT-1 and FIN-WAIT-1 -> TIME-WAIT; the code
    takes them in two steps within one input, and TCP_TRANSITIONS says so (no direct edges)."""
    moves: list[tuple[TcpState, TcpState]] = []
    original = TcpConnection._move

    def recording_move(conn, state):
        moves.append((conn.state, state))
        original(conn, state)

    monkeypatch.setattr(TcpConnection, "_move", recording_move)
    pair = Pair()
    pair.server.close(NOW_S)
    pair.to_client()
    moves.clear()
    pair.to_server()
    assert moves == [(T.SYN_RECEIVED, T.ESTABLISHED), (T.ESTABLISHED, T.FIN_WAIT_1)]

    pair = Pair().handshake()
    pair.client.close(NOW_S)
    pair.to_server()
    pair.server.pull_packets()
    pair.server.close(NOW_S)
    moves.clear()
    pair.to_client()
    assert moves == [(T.FIN_WAIT_1, T.FIN_WAIT_2), (T.FIN_WAIT_2, T.TIME_WAIT)]


# --- illegal inputs to the relay sessions ------------------------------------------------------------------


CONVERTER_POLICY = ConverterPolicy(allowed_client_prefixes=("198.18.0.0/24",))


def _converter_session() -> relay.RelaySession:
    return Converter(CONVERTER_POLICY, random.Random(1)).session(CLIENT_ADDR, NOW_S)


def _convert_request() -> bytes:
    return ConvertClientExchange().syn_payload(SERVER_ADDR, SERVER_PORT)


def _mp_convert_session() -> relay.RelaySession:
    request = MpConvertRequest((SERVER_ADDR, SERVER_PORT), SignallingMode.OPTION)
    return MpConvertSession(request, (CLIENT_ADDR, CLIENT_PORT), MpConvertProxyPolicy(explicit_ports=(1234,)), NOW_S)


def _socks5_connecting() -> relay.RelaySession:
    session = _socks5_session()
    session.receive_upstream(Socks5Greeting((0,)).encode() + Socks5Request(SERVER_ADDR, SERVER_PORT).encode(), NOW_S)
    return session


def _to_connecting(session: relay.RelaySession) -> relay.RelaySession:
    session.receive_upstream(_convert_request(), NOW_S)  # a Convert request: Connect to the server
    return session


def _to_relaying(session: relay.RelaySession) -> relay.RelaySession:
    session.downstream_connected(NOW_S, (MaximumSegmentSize(1460),))
    return session


def _to_done(session: relay.RelaySession) -> relay.RelaySession:
    session.downstream_reset(NOW_S)
    return session


def _built(start: Callable[[], relay.RelaySession], *steps: Callable) -> Callable[[], relay.RelaySession]:
    def build() -> relay.RelaySession:
        session = start()
        for step in steps:
            session = step(session)
        return session
    return build


#: A session of each kind in each of its states (decisions left pending on purpose: an illegal
#: input must not touch them either).
SESSIONS_IN: dict[tuple[str, Any], Callable[[], relay.RelaySession]] = {
    ("ConverterSession", CS.EXPECT_CONVERT_MESSAGE): _converter_session,
    ("ConverterSession", CS.CONNECTING_DOWNSTREAM): _built(_converter_session, _to_connecting),
    ("ConverterSession", CS.RELAYING): _built(_converter_session, _to_connecting, _to_relaying),
    ("ConverterSession", CS.DONE): _built(_converter_session, _to_connecting, _to_done),
    ("MpConvertSession", MS.CONNECTING_DOWNSTREAM): _mp_convert_session,
    ("MpConvertSession", MS.RELAYING): _built(_mp_convert_session, _to_relaying),
    ("MpConvertSession", MS.DONE): _built(_mp_convert_session, _to_done),
    ("Socks5Session", KS.EXPECT_GREETING): _socks5_session,
    ("Socks5Session", KS.EXPECT_REQUEST): lambda: (s := _socks5_session(),
                                                   s.receive_upstream(Socks5Greeting((0,)).encode(), NOW_S))[0],
    ("Socks5Session", KS.CONNECTING_DOWNSTREAM): _socks5_connecting,
    ("Socks5Session", KS.RELAYING): _built(_socks5_connecting, _to_relaying),
    ("Socks5Session", KS.DONE): _built(_socks5_connecting, _to_done),
}

#: The downstream outcomes and the (shared) phases in which each can happen (RelaySession).
DOWNSTREAM_INPUTS: dict[str, tuple[Callable[[relay.RelaySession], None], frozenset[str]]] = {
    "downstream_connected": (lambda s: s.downstream_connected(NOW_S, ()), frozenset({"CONNECTING"})),
    "downstream_reset": (lambda s: s.downstream_reset(NOW_S), frozenset({"CONNECTING", "RELAYING"})),
    "downstream_unreachable": (lambda s: s.downstream_unreachable(NOW_S, 1), frozenset({"CONNECTING", "RELAYING"})),
    "downstream_timeout": (lambda s: s.downstream_timeout(NOW_S), frozenset({"CONNECTING", "RELAYING"})),
    "downstream_failed": (lambda s: s.downstream_failed(NOW_S), frozenset({"CONNECTING", "RELAYING"})),
    "downstream_data": (lambda s: s.downstream_data(b"x"), frozenset({"RELAYING"})),
    "downstream_closed": (lambda s: s.downstream_closed(), frozenset({"RELAYING"})),
}

#: Every input a session takes, for the DONE check.
ALL_INPUTS: dict[str, Callable[[relay.RelaySession], None]] = {
    **{name: call for name, (call, _) in DOWNSTREAM_INPUTS.items()},
    "receive_upstream": lambda s: s.receive_upstream(b"more", NOW_S),
    "upstream_syn_retransmitted": lambda s: s.upstream_syn_retransmitted(NOW_S),
    "upstream_closed": lambda s: s.upstream_closed(NOW_S),
    "upstream_reset": lambda s: s.upstream_reset(NOW_S),
    "upstream_fell_back": lambda s: s.upstream_fell_back(NOW_S),
    "handle_timer": lambda s: s.handle_timer(NOW_S + 3600),
}


def _phase(session: relay.RelaySession) -> str:
    for phase in ("CONNECTING", "RELAYING", "DONE"):
        if session.state is getattr(session, phase):
            return phase
    return "REQUEST"  # a request phase of the session's own (Convert message, SOCKS5 greeting or request)


def snapshot(session: relay.RelaySession) -> dict:
    """Everything an input could change: the session's own fields (its pending decisions
    included) and, for a converter session, the converter's counters and session count."""
    state = {k: copy.deepcopy(v) for k, v in vars(session).items() if k not in ("converter", "policy")}
    converter = getattr(session, "converter", None)
    if converter is not None:
        state["converter"] = (dict(converter.counters), converter.active_sessions)
    return state


def test_the_session_builders_cover_every_state_of_every_session():
    for kind in ("ConverterSession", "MpConvertSession", "Socks5Session"):
        built = {state for (k, state) in SESSIONS_IN if k == kind}
        assert built == set(TABLES[kind]), kind
    assert all(SESSIONS_IN[key]().state is key[1] for key in SESSIONS_IN)


ILLEGAL_SESSION_INPUTS = [
    pytest.param(key, name, id=f"{key[0]}-{key[1].name}-{name}")
    for key, build in SESSIONS_IN.items()
    for name, (_, legal_phases) in DOWNSTREAM_INPUTS.items()
    if key[1].name != "DONE" and _phase(build()) not in legal_phases
]


@pytest.mark.parametrize("key, name", ILLEGAL_SESSION_INPUTS)
def test_an_illegal_downstream_input_raises_and_changes_nothing(key, name):
    session = SESSIONS_IN[key]()
    before = snapshot(session)
    with pytest.raises(LocalProtocolError, match=name):
        DOWNSTREAM_INPUTS[name][0](session)
    assert snapshot(session) == before


def test_there_are_illegal_inputs_in_every_live_state():
    """The parametrization above is not empty where it matters: every live state refuses some
    downstream outcome (connected once relaying, data before, everything in a request phase)."""
    refused_in = {param.values[0] for param in ILLEGAL_SESSION_INPUTS}
    assert refused_in == {key for key in SESSIONS_IN if key[1].name != "DONE"}


@pytest.mark.parametrize("key", [key for key in SESSIONS_IN if key[1].name == "DONE"], ids=lambda k: k[0])
@pytest.mark.parametrize("name", list(ALL_INPUTS))
def test_every_input_is_ignored_in_done(key, name):
    session = SESSIONS_IN[key]()
    before = snapshot(session)
    ALL_INPUTS[name](session)
    assert snapshot(session) == before


@pytest.mark.parametrize("key", [k for k in SESSIONS_IN if _phase(SESSIONS_IN[k]()) in ("CONNECTING", "RELAYING")],
                         ids=lambda k: f"{k[0]}-{k[1].name}")
def test_client_bytes_after_the_client_fin_are_refused_and_change_nothing(key):
    session = SESSIONS_IN[key]()
    session.upstream_closed(NOW_S)
    before = snapshot(session)
    with pytest.raises(LocalProtocolError, match="after its FIN"):
        session.receive_upstream(b"late", NOW_S)
    assert snapshot(session) == before


@pytest.mark.parametrize("name", ["downstream_data", "downstream_closed"])
def test_server_input_after_the_server_fin_is_refused(name):
    session = _built(_converter_session, _to_connecting, _to_relaying)()
    session.downstream_closed()
    before = snapshot(session)
    with pytest.raises(LocalProtocolError):
        DOWNSTREAM_INPUTS[name][0](session)
    assert snapshot(session) == before


# --- illegal commands to a TcpConnection -------------------------------------------------------------


def tcp_snapshot(conn: TcpConnection) -> dict:
    """Everything but the clock of the latest input: state, sequence numbers, queued bytes, the
    pending packets and events, the timer, the counters."""
    return {k: copy.deepcopy(v) for k, v in vars(conn).items() if k not in ("_now_s", "extensions")}


RAISES, NO_OP = "raises", "no-op"
TCP_COMMANDS: dict[str, Callable[[TcpConnection], None]] = {
    "send": lambda c: c.send(b"x", NOW_S + 1),
    "close": lambda c: c.close(NOW_S + 1),
    "send_synack": lambda c: c.send_synack(NOW_S + 1),
    "send_ack": lambda c: c.send_ack(NOW_S + 1),
    "abort": lambda c: c.abort(NOW_S + 1),
    "retransmit_syn": lambda c: c.retransmit_syn(NOW_S + 1),
    "end_time_wait": lambda c: c.end_time_wait(NOW_S + 1),
    "icmp_unreachable": lambda c: c.icmp_unreachable(3, NOW_S + 1),
}
_NOT_SENDING = ["CLOSED", "FIN_WAIT_1", "FIN_WAIT_2", "CLOSING", "LAST_ACK", "TIME_WAIT", "SYN_RECEIVED after close"]
_CLOSED_ALREADY = ["FIN_WAIT_1", "FIN_WAIT_2", "CLOSING", "LAST_ACK", "TIME_WAIT", "SYN_RECEIVED after close"]
#: (command, state label) -> what the docstrings promise where the command makes no sense.
TCP_ILLEGAL: dict[tuple[str, str], str] = {
    **{("send", s): RAISES for s in _NOT_SENDING},
    ("close", "CLOSED"): RAISES,
    **{("close", s): NO_OP for s in _CLOSED_ALREADY},  # "closing twice is harmless"
    **{("send_synack", s): RAISES for s in TCP_IN if s != "SYN_RECEIVED withheld"},
    **{("send_ack", s): RAISES for s in TCP_IN if s.split()[0] in ("CLOSED", "SYN_SENT", "SYN_RECEIVED", "TIME_WAIT")},
    ("abort", "CLOSED"): NO_OP,  # "owners may abort unconditionally"
    **{("retransmit_syn", s): RAISES for s in TCP_IN if s != "SYN_SENT"},
    **{("end_time_wait", s): RAISES for s in TCP_IN if s != "TIME_WAIT"},
    **{("icmp_unreachable", s): NO_OP for s in TCP_IN if s != "SYN_SENT"},  # soft once synchronized (RFC 5461)
}


@pytest.mark.parametrize("command, label", list(TCP_ILLEGAL), ids=[f"{c}-{s}" for c, s in TCP_ILLEGAL])
def test_an_illegal_tcp_command_raises_or_does_nothing_and_changes_nothing(command, label):
    conn = TCP_IN[label]()
    before = tcp_snapshot(conn)
    if TCP_ILLEGAL[command, label] == RAISES:
        with pytest.raises(LocalProtocolError):
            TCP_COMMANDS[command](conn)
    else:
        TCP_COMMANDS[command](conn)
    assert tcp_snapshot(conn) == before


@pytest.mark.parametrize("command", list(TCP_COMMANDS))
def test_each_tcp_command_is_legal_somewhere(command):
    """The illegal table is not everything: each command visibly acts in some state it is not
    listed for, so "changes nothing" above is a property of the state, not of the command."""
    changed = []
    for label in (s for s in TCP_IN if (command, s) not in TCP_ILLEGAL):
        conn = TCP_IN[label]()
        before = tcp_snapshot(conn)
        TCP_COMMANDS[command](conn)
        changed.append(tcp_snapshot(conn) != before)
    assert any(changed)


# --- an illegal command to an MPTCP extension ----------------------------------------------------------


def _mptcp_in(state: MptcpState) -> _MptcpExtension:
    """A fresh extension moved along legal edges to ``state`` (the extension is its own machine)."""
    if state is MptcpState.EXPECT_SYNACK:
        return MptcpClientExtension(rng=random.Random(1), mib=Counter())
    ext = MptcpServerExtension(rng=random.Random(1), mib=Counter())
    path = {MptcpState.EXPECT_SYN: [], MptcpState.PLAIN: [MptcpState.PLAIN],
            MptcpState.EXPECT_ACK: [MptcpState.EXPECT_ACK], MptcpState.NEGOTIATED: [MptcpState.EXPECT_ACK, state],
            MptcpState.FALLEN_BACK: [MptcpState.FALLEN_BACK]}[state]
    for step in path:
        ext._move(step)
    return ext


@pytest.mark.parametrize("state", [s for s in MptcpState if s is not MptcpState.NEGOTIATED], ids=lambda s: s.name)
def test_mp_fastclose_outside_mptcp_raises_and_changes_nothing(state):
    ext, conn = _mptcp_in(state), TCP_IN["ESTABLISHED"]()
    before = ({k: copy.deepcopy(v) for k, v in vars(ext).items() if k != "_rng"}, tcp_snapshot(conn))
    with pytest.raises(LocalProtocolError, match="MP_FASTCLOSE"):
        ext.send_fastclose(conn, NOW_S)
    assert ({k: copy.deepcopy(v) for k, v in vars(ext).items() if k != "_rng"}, tcp_snapshot(conn)) == before


def test_mp_fastclose_is_legal_once_negotiated():
    ext, conn = _mptcp_in(MptcpState.NEGOTIATED), TCP_IN["ESTABLISHED"]()
    ext.send_fastclose(conn, NOW_S)
    assert ext.mib["MPFastcloseTx"] == 1 and len(conn.pull_packets()) == 1
