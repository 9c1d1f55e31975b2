"""The client host (mpsim/proto/client.py) end to end: one named test per situation of the seed
discussion (docs/design.md 4, docs/protocols.md 2.6 and 8, numbered as in the brief), per-scheme first-byte
times, the converter's error codes, what the MP_CONVERT and SOCKS5 proxies' answers cost, and
invariants over random truth-table cases.

Topology (the truth table's, built here with every knob exposed): client -10 ms- router -0 ms-
proxy, router -20 ms- server; the MP_CONVERT proxy sits on the path instead (client -10 ms- proxy
-0 ms- router), with the same delays. Round trips: client-proxy 20 ms, proxy-server 40 ms,
client-server 60 ms. One request is 100 bytes up, 1000 bytes down. Times are exact sums of these
delays; the harness logs a packet when it reaches the next hop, ``Net.sent`` gives send times.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv6Address, ip_network
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpsim.proto.truth_table import (
    CLIENT,
    PROXY_DOWN,
    PROXY_PORT,
    PROXY_UP,
    SERVER,
    SERVER_PORT,
    table_middleboxes,
    table_servers,
    access_box,
)
from mpsim.proto.cache import CachePolicy, CacheReprobed, ProxyState, ReprobeTrigger
from mpsim.proto.catalogue import UnknownComponentError
from mpsim.proto.client import (
    LOGICAL_TRANSITIONS,
    ClientHost,
    ClientPolicy,
    ConnectionFinished,
    ConnectionRecord,
    FallbackTarget,
    LogicalConnection,
    LogicalState,
    Request,
    SignalAckedAsData,
)
from mpsim.proto.convert import ConverterHost, ConverterPolicy, ConverterTiming
from mpsim.proto.events import Outcome
from mpsim.proto.harness import Harness, Router, drop_matching
from mpsim.proto.middlebox import PASS, DropSegments, SegmentClass, StripOptions, StripPayload
from mpsim.proto.mptcp import MptcpClientExtension, MptcpServerExtension
from mpsim.proto.mp_convert_proxy import (
    MpConvertProxied,
    MpConvertProxyHost,
    MpConvertProxyPolicy,
    MpConvertRejected,
    MpConvertRejection,
    MpConvertReverted,
)
from mpsim.proto.server import ResponderApp, ServerApp, ServerHost, ServerKind
from mpsim.proto.socks5_proxy import Socks5ProxyHost, Socks5ProxyPolicy
from mpsim.proto.tcp import Established, TcpState
from mpsim.wire.convert import ConnectTlv, parse_convert_prefix
from mpsim.wire.mp_convert import MpConvert
from mpsim.wire.options import FastOpen, TcpOptionKind
from mpsim.wire.segment import IpPacket, TcpFlags
from mpsim.wire.syn_payload import SynPayloadSignal, decode_syn_payload

PROXY = (PROXY_UP, PROXY_PORT)
CLIENT_SERVER_RTT_S = 0.060
CLIENT_PROXY_RTT_S = 0.020
PROXY_SERVER_RTT_S = 0.040
REQUEST = Request(SERVER, SERVER_PORT, request_size_bytes=100, response_size_bytes=1000)
RESPONSE_BYTES = 1000
MPTCP_KINDS = (TcpOptionKind.SACK_PERMITTED, TcpOptionKind.TIMESTAMPS, TcpOptionKind.TFO, TcpOptionKind.MPTCP)


def is_rst(packet) -> bool:
    return bool(packet.segment.flags & TcpFlags.RST)


class DeadlineChecked:
    """Wraps a machine for the harness and checks, after every input, that its next deadline is
    not in the past (a timer just handled must have moved on, or the harness would spin)."""

    def __init__(self, machine: Any) -> None:
        self.machine = machine

    def receive(self, port: str, packet: Any, now: float) -> None:
        self.machine.receive(port, packet, now)
        deadline = self.machine.get_timer()
        assert deadline is None or deadline >= now, (self.machine, deadline, now)

    def handle_timer(self, now: float) -> None:
        self.machine.handle_timer(now)
        deadline = self.machine.get_timer()
        assert deadline is None or deadline > now, (self.machine, deadline, now)

    def get_timer(self) -> float | None:
        return self.machine.get_timer()

    def outgoing(self, now: float) -> list:
        return self.machine.outgoing(now)

    def next_event(self) -> Any | None:
        return self.machine.next_event()


@dataclass
class Net:
    harness: Harness
    client: ClientHost
    proxy: Any  # ConverterHost, MpConvertProxyHost or Socks5ProxyHost
    server: ServerHost

    def request(self, at_s: float, request: Request = REQUEST, run_s: float = 10.0) -> ConnectionRecord:
        """Run the clock to ``at_s``, start ``request``, run ``run_s`` more; its record."""
        assert at_s >= self.harness.now, "requests go forward in time"
        self.harness.run(at_s)
        request_id = self.client.connect(request, self.harness.now)
        self.harness.run(at_s + run_s)
        return self.record(request_id)

    def record(self, request_id: int) -> ConnectionRecord:
        (record,) = [r for r in self.client.finished if r.request_id == request_id]
        return record

    def sent(self, src: str, **segment_fields: Any) -> list[tuple[float, Any]]:
        """(send time, segment) of what ``src`` sent, dropped or not, whose segment has the given
        field values (e.g. ``src_port=``). The harness logs arrivals at the next hop."""
        delay_s = {"client": 0.010, "server": 0.020, "proxy": 0.0}[src]
        return [(d.time_s - delay_s, d.packet.segment) for d in self.harness.log
                if d.src == src and isinstance(d.packet, IpPacket)
                and all(getattr(d.packet.segment, k) == v for k, v in segment_fields.items())]


def build_net(policy: ClientPolicy, server_kind: ServerKind = ServerKind.LEGACY_DROP, *, up: Any = PASS,
              down: Any = PASS, timing: ConverterTiming = ConverterTiming.RFC, converter: dict | None = None,
              cache_policy: CachePolicy | None = None, seed: int = 1, checked: bool = False,
              app: ServerApp | None = None, proxy_kind: str = "convert") -> Net:
    """The truth table's topology with a configurable proxy, middlebox (``up``/``down`` on the
    access link) and client caches. ``proxy_kind``: "convert" (``converter``: ConverterPolicy
    fields), "socks5", or "mp_convert": an MP_CONVERT proxy explicit on PROXY_PORT and implicit
    on the path, so it sits between the access link and the router (same delays)."""
    rng = random.Random(seed)
    harness = Harness()
    client = ClientHost("client", {"eth0": CLIENT}, rng=rng, policy=policy, proxies=(PROXY,),
                        cache_policy=cache_policy)
    interfaces = {"up": PROXY_UP, "down": PROXY_DOWN}
    if proxy_kind == "convert":
        mibs: dict[str, Any] = {}
        converter_policy = ConverterPolicy(**{"allowed_client_prefixes": ("198.18.0.0/24",), "timing": timing,
                                              **(converter or {})})
        proxy = ConverterHost(
            "proxy", interfaces, rng=rng, convert_port=PROXY_PORT, server_interfaces=("down",), policy=converter_policy,
            upstream_extensions=lambda syn: (MptcpServerExtension(rng=rng, mib=mibs["proxy"]),),
            downstream_extensions=lambda request: ((MptcpClientExtension(rng=rng, mib=mibs["proxy"]),)
                                                   if request.mptcp else ()))
        mibs["proxy"] = proxy.mib
    elif proxy_kind == "socks5":
        proxy = Socks5ProxyHost("proxy", interfaces, rng=rng, server_interfaces=("down",),
                                policy=Socks5ProxyPolicy(port=PROXY_PORT))
    else:
        proxy = MpConvertProxyHost("proxy", interfaces, rng=rng, client_interface="up", server_interfaces=("down",),
                                   policy=MpConvertProxyPolicy(explicit_ports=(PROXY_PORT,), implicit=True,
                                                               timing=timing))
    server = ServerHost("server", SERVER, server_kind, rng=rng, ports=(SERVER_PORT,),
                        app=app or ResponderApp(RESPONSE_BYTES, request_size_bytes=REQUEST.request_size_bytes))
    on_path = proxy_kind == "mp_convert"
    router = Router({"c": [] if on_path else ["198.18.0.0/24"], "p_up": ["198.18.1.0/24"],
                     "p_down": ["198.18.0.0/24", "198.18.2.0/24"] if on_path else ["198.18.2.0/24"],
                     "s": ["198.18.3.0/24"]})
    for name, machine in (("client", client), ("router", router), ("proxy", proxy), ("server", server)):
        harness.add(name, DeadlineChecked(machine) if checked else machine)
    if on_path:
        harness.link("client", "eth0", "proxy", "up", 0.010, a_to_b=[up], b_to_a=[down])
    else:
        harness.link("client", "eth0", "router", "c", 0.010, a_to_b=[up], b_to_a=[down])
        harness.link("proxy", "up", "router", "p_up", 0.0)
    harness.link("proxy", "down", "router", "p_down", 0.0)
    harness.link("server", "eth0", "router", "s", 0.020)
    return Net(harness, client, proxy, server)


def server_stream(net: Net, client_port: int) -> bytes:
    return net.server.app.stream((SERVER, SERVER_PORT, CLIENT, client_port))


def client_ports(net: Net) -> list[int]:
    """The client's source ports, in the order their SYNs left."""
    return list(dict.fromkeys(seg.src_port for _, seg in net.sent("client") if seg.flags & TcpFlags.SYN))


# --- 1. a legacy peer ACKs the signalling as SYN data -----------------------------------------------------


IMPLICIT_EOL = ClientPolicy(scheme="syn-payload-eol", implicit=True)


def test_legacy_queue_acks_signalling_continue_leaks_it_into_the_stream():
    # Implicit mode, no proxy on the path: the SYN meets the server itself, which queues the SYN
    # data and ACKs it (RFC 9293 3.10.7.2). CONTINUE keeps the connection, so the application's
    # stream opens with the signalling bytes: MP_CONVERT(implicit) 1e 04 f8 c0, then the EOL.
    net = build_net(replace(IMPLICIT_EOL, signal_acked_as_data=SignalAckedAsData.CONTINUE), ServerKind.LEGACY_QUEUE)
    record = net.request(0.0)
    assert (record.outcome, record.fallback_reason, record.signal_leaked) == \
        ("fallback_tcp", "signal_acked_as_data", True)
    assert (record.syns_sent, record.rsts_sent, record.source_ports_used, record.attempts) == (1, 0, 1, 1)
    (port,) = client_ports(net)
    assert server_stream(net, port) == bytes.fromhex("1e04f8c0") + b"\x00" + REQUEST.payload()
    # The request rode in the SYN and the answer came after the handshake: 2 RTTs, nothing lost.
    assert record.setup_time_s == pytest.approx(CLIENT_SERVER_RTT_S)
    assert record.first_byte_time_s == pytest.approx(2 * CLIENT_SERVER_RTT_S)
    assert (record.bytes_sent, record.bytes_delivered, record.via_proxy) == (100, RESPONSE_BYTES, False)


def test_legacy_queue_acks_signalling_reset_falls_back_on_a_new_port():
    net = build_net(IMPLICIT_EOL, ServerKind.LEGACY_QUEUE)  # policy RESET is the default
    record = net.request(0.0)
    assert (record.outcome, record.fallback_reason, record.signal_leaked) == \
        ("fallback_tcp", "signal_acked_as_data", False)
    assert (record.syns_sent, record.rsts_sent, record.source_ports_used, record.attempts) == (2, 1, 2, 2)
    first, second = client_ports(net)
    assert first != second
    # The RST answered the SYN-ACK in place of the third ACK, so the queued SYN data, delivered
    # only once ESTABLISHED, never reached the application: the signalling appears nowhere, and
    # the fallback connection carries exactly the request.
    assert server_stream(net, first) == b""
    assert server_stream(net, second) == REQUEST.payload()
    # Reset at 60 ms, then a whole plain connection: 60 + 120 ms.
    assert record.setup_time_s == pytest.approx(2 * CLIENT_SERVER_RTT_S)
    assert record.first_byte_time_s == pytest.approx(3 * CLIENT_SERVER_RTT_S)
    assert record.bytes_sent == 200  # the request went out twice: in the refused SYN, then again


def test_legacy_drop_acks_isn_only_reset_without_resending_the_signalling():
    # A Linux listener drops SYN data and ACKs ISN+1. A Linux TFO client would resend the unACKed
    # SYN data after the handshake (TcpPolicy.resend_unacked_syn_data), putting the signalling into
    # the stream; the client must RST instead, and whatever the policy says about ACKed data.
    for policy in SignalAckedAsData:
        net = build_net(replace(IMPLICIT_EOL, signal_acked_as_data=policy), ServerKind.LEGACY_DROP)
        record = net.request(0.0)
        assert (record.outcome, record.fallback_reason, record.signal_leaked) == \
            ("fallback_tcp", "signal_not_acked", False)
        assert (record.syns_sent, record.rsts_sent, record.source_ports_used) == (2, 1, 2)
        first, second = client_ports(net)
        after_synack = [seg.flags for _, seg in net.sent("client", src_port=first)][1:]
        assert after_synack == [TcpFlags.RST]  # no ACK, no data: the signalling was not resent
        assert server_stream(net, first) == b""
        assert server_stream(net, second) == REQUEST.payload()


# --- 2. the RST is lost ------------------------------------------------------------------------------------


@pytest.mark.parametrize("keep_open", [False, True])
def test_a_connection_kept_open_closes_only_after_its_peer(keep_open):
    # Request.keep_open (a simulated transfer follows on the connection, docs/sim.md "Routes"):
    # the record is the same and comes at the same time, but the client sends no FIN after the
    # response; it answers the server's FIN with its own. Without it the client closes at once.
    net = build_net(ClientPolicy(scheme="plain"))
    record = net.request(0.0, replace(REQUEST, keep_open=keep_open), run_s=1.0)
    assert record.outcome == "tcp" and record.completion_time_s == pytest.approx(2 * CLIENT_SERVER_RTT_S)
    (port,) = client_ports(net)
    client_fins = [t for t, seg in net.sent("client", src_port=port) if seg.flags & TcpFlags.FIN]
    if not keep_open:
        assert client_fins == [pytest.approx(record.completion_time_s)]
        return
    assert client_fins == []
    conn = net.client.connections[(CLIENT, port, SERVER, SERVER_PORT)]
    assert conn.state is TcpState.ESTABLISHED
    server_conn = net.server.connections[(SERVER, SERVER_PORT, CLIENT, port)]
    server_conn.close(1.0)
    net.server.collect(server_conn, 1.0)
    net.harness.run(2.0)
    # the server's FIN reaches the client half an RTT later; the client's FIN goes at once
    assert [t for t, seg in net.sent("client", src_port=port) if seg.flags & TcpFlags.FIN] == \
        [pytest.approx(1.0 + CLIENT_SERVER_RTT_S / 2)]
    assert conn.state is TcpState.CLOSED and server_conn.state is TcpState.TIME_WAIT


def test_lost_rst_fallback_uses_a_new_port_and_succeeds_at_once():
    net = build_net(IMPLICIT_EOL, ServerKind.LEGACY_QUEUE, up=drop_matching(is_rst))
    record = net.request(0.0, run_s=0.3)
    first, second = client_ports(net)
    # The server never saw the RST: it still holds the first connection, half open...
    assert net.server.connections[(SERVER, SERVER_PORT, CLIENT, first)].state is TcpState.SYN_RECEIVED
    # ...and it does not matter, since the fallback came from another port: same times as when
    # the RST arrives (test above).
    assert (record.outcome, record.source_ports_used, record.rsts_sent) == ("fallback_tcp", 2, 1)
    assert record.first_byte_time_s == pytest.approx(3 * CLIENT_SERVER_RTT_S)
    # The allocator keeps the reset pair out of use for as long as TIME-WAIT would (60 s).
    assert net.client.ports.is_quarantined((CLIENT, first, SERVER, SERVER_PORT), 59.0)
    assert not net.client.ports.is_quarantined((CLIENT, first, SERVER, SERVER_PORT), 60.1)


class _Recorder:
    """A bare connection owner: keeps the events with their times."""

    def __init__(self) -> None:
        self.events: list[tuple[float, Any]] = []

    def on_tcp_event(self, host, conn, event, now: float) -> None:
        self.events.append((now, event))


@pytest.mark.parametrize("old_state", ["half_open", "established"])
def test_lost_rst_same_four_tuple_collides_and_costs_a_syn_timeout(old_state):
    """What the allocator spares us: reopening the reset 4-tuple while the server still holds it."""
    recorder = _Recorder()
    if old_state == "half_open":  # case 1's RST lost: the server waits in SYN-RECEIVED
        net = build_net(IMPLICIT_EOL, ServerKind.LEGACY_QUEUE, up=drop_matching(is_rst))
        net.request(0.0, run_s=0.5)
        old_port = client_ports(net)[0]
    else:  # an established connection the client reset, its RST lost
        net = build_net(ClientPolicy(scheme="plain"), ServerKind.LEGACY_DROP, up=drop_matching(is_rst))
        conn = net.client.open(recorder, CLIENT, SERVER, SERVER_PORT, 0.0)
        net.harness.run(0.2)
        net.client.abort(conn, 0.2)
        net.harness.run(0.5)
        old_port = conn.local_port
        assert net.server.connections[(SERVER, SERVER_PORT, CLIENT, old_port)].state is TcpState.ESTABLISHED
        recorder.events.clear()
    net.harness.hops[("client", "eth0")].filters.clear()  # from now on RSTs get through
    conn = net.client.open(recorder, CLIENT, SERVER, SERVER_PORT, 0.5, local_port=old_port)
    net.harness.run(3.0)
    answer_s, answer = next((t, seg) for t, seg in net.sent("server", dst_port=old_port) if t > 0.5)
    if old_state == "established":
        # RFC 5961 4.2: a SYN on a synchronized connection draws a challenge ACK, not a SYN-ACK,
        # as soon as the SYN arrives.
        assert (answer.flags, answer_s) == (TcpFlags.ACK, pytest.approx(0.53))
    else:
        # Linux ignores a new SYN in SYN-RECEIVED; the old SYN-ACK's retransmission (1 s after
        # the first, at 30 ms) is what reaches the new connection.
        assert (answer.flags, answer_s) == (TcpFlags.SYN | TcpFlags.ACK, pytest.approx(1.03))
    # Either ACK is unacceptable in SYN-SENT: the client answers RST (RFC 9293 3.10.7.3), which
    # clears the server, and only the SYN retransmission at 1.5 s gets through.
    assert conn.rsts_sent == 1 and conn.syns_sent == 2
    (established_s,) = [t for t, e in recorder.events if isinstance(e, Established)]
    assert established_s == pytest.approx(1.5 + CLIENT_SERVER_RTT_S)  # instead of 0.56: one SYN RTO lost


# --- 3. a converter marked off, and the four re-probe triggers --------------------------------------------


def _reprobe(net: Net, trigger: ReprobeTrigger) -> None:
    client, now = net.client, net.harness.now
    if trigger is ReprobeTrigger.HOST_REBOOT:
        client.reboot(now)
    elif trigger is ReprobeTrigger.NETWORK_ATTACHMENT:
        client.attach_network(now)
    elif trigger is ReprobeTrigger.NEW_PROXY_DISCOVERED:
        client.discover_proxy(PROXY, now)
    else:  # the timer runs in simulated time, through get_timer / handle_timer
        net.harness.run(now + 100.0)


@pytest.mark.parametrize("trigger", list(ReprobeTrigger))
def test_converter_marked_off_by_stripped_payload_then_reprobed(trigger):
    # Socket timing: the converter's kernel answers a SYN whose payload a middlebox stripped,
    # ACKing ISN+1 only. RFC 8803 8: reset, and stop using that converter.
    net = build_net(ClientPolicy(scheme="convert"), up=StripPayload(frozenset({SegmentClass.SYN})),
                    timing=ConverterTiming.SOCKET, cache_policy=CachePolicy(off_reprobe_s=100.0))
    first = net.request(0.0)
    assert (first.outcome, first.fallback_reason, first.source_ports_used, first.rsts_sent) == \
        ("fallback_tcp", "signal_not_acked", 2, 1)
    assert net.client.proxy_state(PROXY, net.harness.now) is ProxyState.OFF
    # The verdict's deadline is among the host's timers (TIME-WAIT, at 60 s, comes first).
    assert net.client.caches.get_timer() == pytest.approx(0.02 + 100.0)
    assert net.client.get_timer() <= net.client.caches.get_timer()
    cached = net.request(20.0)  # within the 100 s: straight to the server
    assert (cached.outcome, cached.fallback_reason, cached.source_ports_used, cached.syns_sent) == \
        ("fallback_tcp", "converter_cached_off", 1, 1)
    assert cached.first_byte_time_s == pytest.approx(2 * CLIENT_SERVER_RTT_S)
    assert net.proxy.converter.counters["sessions"] == 1
    _reprobe(net, trigger)
    net.harness.flush()
    reprobed = [e for _, n, e in net.harness.events if n == "client" and isinstance(e, CacheReprobed)]
    assert [(e.trigger, e.previous_state) for e in reprobed] == [(trigger, ProxyState.OFF)]
    again = net.request(max(net.harness.now, 40.0))
    assert net.proxy.converter.counters["sessions"] == 2  # the converter was tried again
    assert again.fallback_reason == "signal_not_acked"


def test_converter_marked_off_stays_off_without_a_trigger():
    net = build_net(ClientPolicy(scheme="convert"), up=StripPayload(frozenset({SegmentClass.SYN})),
                    timing=ConverterTiming.SOCKET, cache_policy=CachePolicy(off_reprobe_s=None))
    net.request(0.0)
    later = net.request(5000.0)
    assert (later.fallback_reason, later.source_ports_used) == ("converter_cached_off", 1)
    assert net.client.caches.get_timer() is None


def test_stripped_payload_rfc_timing_times_out_after_the_proxy_syn_retries():
    # RFC timing: the converter silently ignores a SYN without a Convert message (RFC 8803 6), so
    # the client sees nothing: SYNs at 0, 1 and 3 s (proxy_syn_retries=2), fallback at 7 s.
    net = build_net(ClientPolicy(scheme="convert"), up=StripPayload(frozenset({SegmentClass.SYN})))
    record = net.request(0.0, run_s=20.0)
    syn_times = [round(t, 6) for t, seg in net.sent("client") if seg.flags == TcpFlags.SYN]
    assert syn_times == [0.0, 1.0, 3.0, 7.0]  # the last one is the direct fallback
    assert (record.outcome, record.fallback_reason, record.rsts_sent, record.source_ports_used) == \
        ("fallback_tcp", "converter_syn_timeout", 0, 2)
    assert record.setup_time_s == pytest.approx(7.0 + CLIENT_SERVER_RTT_S)
    assert record.first_byte_time_s == pytest.approx(7.0 + 2 * CLIENT_SERVER_RTT_S)
    assert net.client.proxy_state(PROXY, 8.0) is ProxyState.OFF


# --- 4. TFO and conversion: the three orderings ------------------------------------------------------------


def _connect_tfo_option(net: Net, request_index: int) -> FastOpen | None:
    """The TFO entry of the Connect TLV in the client's ``request_index``-th SYN to the converter."""
    syns = [seg for _, seg in net.sent("client", dst_port=PROXY_PORT) if seg.flags == TcpFlags.SYN and seg.payload]
    message, _ = parse_convert_prefix(syns[request_index].payload)
    entry = next((o for o in message.tlv(ConnectTlv).options if o.kind == TcpOptionKind.TFO), None)
    return None if entry is None else FastOpen(entry.value)


TFO_CONVERT = ClientPolicy(scheme="convert", tfo_to_server=True)
# Through the converter: a cookie puts the request into the converter's SYN and the server answers
# before the third ACK; the answer then waits at the converter for the client's third ACK (the MPTCP
# upstream cannot map data before it): 2 client-converter RTTs + 1 converter-server RTT.
CONVERTED_S = CLIENT_PROXY_RTT_S + 2 * PROXY_SERVER_RTT_S  # 100 ms: request after the downstream handshake
CONVERTED_TFO_S = 2 * CLIENT_PROXY_RTT_S + PROXY_SERVER_RTT_S  # 80 ms


def test_tfo_ordering_conversion_first_then_cookie_through_the_converter():
    net = build_net(replace(TFO_CONVERT, tfo_to_server=False), ServerKind.TFO)
    times = [net.request(0.0).first_byte_time_s]
    net.client.client_policy = TFO_CONVERT  # the application turns TFO on later
    times += [net.request(20.0).first_byte_time_s, net.request(40.0).first_byte_time_s]
    assert times == pytest.approx([CONVERTED_S, CONVERTED_S, CONVERTED_TFO_S])
    assert _connect_tfo_option(net, 0) is None
    assert _connect_tfo_option(net, 1) == FastOpen(b"")  # the cookie request (RFC 8803 7)
    cookie = net.client.converter_tfo_cookies[(PROXY, SERVER)]
    assert _connect_tfo_option(net, 2) == FastOpen(cookie)  # copied verbatim
    # The server bound it to the converter's address, not the client's.
    assert net.server.tfo_server.is_valid(PROXY_DOWN, cookie) and not net.server.tfo_server.is_valid(CLIENT, cookie)
    assert net.server.mib["TCPFastOpenPassive"] == 1


def test_tfo_ordering_cookie_requested_on_the_first_converted_connection():
    net = build_net(TFO_CONVERT, ServerKind.TFO)
    times = [net.request(at).first_byte_time_s for at in (0.0, 20.0)]
    assert times == pytest.approx([CONVERTED_S, CONVERTED_TFO_S])  # one connection earlier than (a)
    assert _connect_tfo_option(net, 0) == FastOpen(b"")
    assert [r.outcome for r in net.client.finished] == ["converted", "converted"]
    assert all(r.mptcp and r.source_ports_used == 1 for r in net.client.finished)


def test_tfo_ordering_direct_cookie_first_is_useless_through_the_converter():
    net = build_net(ClientPolicy(scheme="plain", tfo_to_server=True), ServerKind.TFO)
    direct = [net.request(at).first_byte_time_s for at in (0.0, 20.0)]
    # Direct TFO: the cookie request costs nothing, the cookie saves a whole RTT.
    assert direct == pytest.approx([2 * CLIENT_SERVER_RTT_S, CLIENT_SERVER_RTT_S])
    direct_cookie = net.client.tfo.cache.get(CLIENT, SERVER).cookie
    net.client.client_policy = TFO_CONVERT
    converted = [net.request(at).first_byte_time_s for at in (40.0, 60.0)]
    # The direct cookie names the client's address; through the converter the server sees the
    # converter's, so the client does not offer it there (converter cookies are keyed by (proxy,
    # server)): it asks afresh, and only the connection after that gains.
    assert _connect_tfo_option(net, 0) == FastOpen(b"")
    assert not net.server.tfo_server.is_valid(PROXY_DOWN, direct_cookie)
    assert net.client.converter_tfo_cookies[(PROXY, SERVER)] != direct_cookie
    assert converted == pytest.approx([CONVERTED_S, CONVERTED_TFO_S])
    # Round trips to the first byte, in client-server RTTs: 2, 1 direct; 1.67, 1.33 converted.
    assert [round(t / CLIENT_SERVER_RTT_S, 2) for t in direct + converted] == [2.0, 1.0, 1.67, 1.33]


def test_tfo_through_the_converter_with_a_plain_upstream_saves_a_whole_converter_server_rtt():
    # Without MPTCP on the client's leg the converter relays the server's early answer right behind
    # its SYN-ACK: first byte at 1 client-converter RTT + 1 converter-server RTT.
    net = build_net(replace(TFO_CONVERT, upstream_mptcp=False), ServerKind.TFO)
    times = [net.request(at).first_byte_time_s for at in (0.0, 20.0)]
    assert times == pytest.approx([CONVERTED_S, CONVERTED_S - PROXY_SERVER_RTT_S])


# --- 5. EOL delimiting the signalling from the data ----------------------------------------------------------


#: A request whose first byte is 0x00, as a DNS query over TCP starts (a 2-byte length).
ZERO_FIRST = Request(SERVER, SERVER_PORT, data=(b"\x00\x62" + b"\x12\x34\x01\x00").ljust(100, b"\x00"))


def test_syn_payload_eol_explicit_request_after_the_eol_reaches_the_server_exactly():
    net = build_net(ClientPolicy(scheme="syn-payload-eol"), ServerKind.LEGACY_DROP, proxy_kind="mp_convert")
    record = net.request(0.0, ZERO_FIRST)
    (syn,) = [seg for _, seg in net.sent("client") if seg.flags == TcpFlags.SYN]
    # MP_CONVERT(198.18.3.1, 80) as a 10-byte option, the EOL, then the request: the client's own
    # EOL comes first, so a request opening with 0x00 is delimited exactly (decode(encode(x)) == x).
    assert syn.payload == bytes.fromhex("1e0af4c0c6120301 0050 00") + ZERO_FIRST.payload()
    assert decode_syn_payload(syn.payload).data == ZERO_FIRST.payload()
    (stream,) = net.server.app.received.values()
    assert bytes(stream) == ZERO_FIRST.payload()  # the proxy relayed what followed the EOL, nothing else
    assert (record.outcome, record.bytes_sent, record.signal_leaked) == ("converted", 100, False)
    assert [type(e) for e in net.harness.events_of("proxy", MpConvertProxied)] == [MpConvertProxied]


def test_eol_ambiguity_a_payload_opening_with_zero_reads_as_empty_signalling():
    # Nothing marks a payload as signalled: read as signalling, data that opens with 0x00 is "no
    # options, EOL", and the first byte vanishes (docs/mp-convert.md 2, "Ambiguity").
    request = ZERO_FIRST.payload()
    assert decode_syn_payload(request) == SynPayloadSignal((), request[1:])
    # The MP_CONVERT proxy never relays such a payload: without an MP_CONVERT it has no destination,
    # so a TFO-style SYN to its port (data, no signalling) is refused, not relayed one byte short.
    net = build_net(ClientPolicy(scheme="plain"), ServerKind.LEGACY_DROP, proxy_kind="mp_convert")
    recorder = _Recorder()
    net.client.open(recorder, CLIENT, PROXY_UP, PROXY_PORT, 0.0, syn_payload=request)
    net.harness.run(1.0)
    assert [type(e).__name__ for _, e in recorder.events] == ["ResetReceived", "Closed"]
    (rejected,) = net.harness.events_of("proxy", MpConvertRejected)
    assert rejected.reason is MpConvertRejection.NO_SIGNAL and net.server.app.received == {}


# --- MP_CONVERT and SOCKS5 proxies: what their answers cost the client ------------------------------------


def test_mp_convert_refusal_is_an_rst_so_a_refused_server_costs_a_fallback():
    # No Error TLV in the MP_CONVERT drafts: the proxy answers the SYN with RST whether the server
    # refused or the proxy did. The client cannot tell, marks the proxy off and tries the server,
    # which refuses again: two ports where Convert's Error 96 needs one (test above).
    net = build_net(ClientPolicy(scheme="mp-convert-option"), ServerKind.CLOSED, proxy_kind="mp_convert")
    record = net.request(0.0)
    assert (record.outcome, record.fallback_reason, record.detail) == ("failed", "converter_refused", "refused")
    assert (record.syns_sent, record.rsts_sent, record.source_ports_used) == (2, 0, 2)
    assert net.client.proxy_state(PROXY, 1.0) is ProxyState.OFF


def test_implicit_mp_convert_is_converted_on_the_path_and_looks_like_mptcp():
    net = build_net(ClientPolicy(scheme="mp-convert-option", implicit=True), ServerKind.LEGACY_DROP,
                    proxy_kind="mp_convert")
    record = net.request(0.0)
    # The on-path proxy answered as the server, with MP_CAPABLE, and echoes nothing: the client
    # sees an MPTCP connection to the server's address and records what it can know.
    assert (record.outcome, record.mptcp, record.via_proxy, record.source_ports_used) == ("mptcp", True, False, 1)
    (proxied,) = net.harness.events_of("proxy", MpConvertProxied)
    assert proxied.destination == (SERVER, SERVER_PORT) and proxied.failure is None
    (key,) = net.server.app.received
    assert key[2] == CLIENT  # address preservation: the server sees the client's own address
    (syn,) = [seg for _, seg in net.sent("client") if seg.flags == TcpFlags.SYN]
    assert MpConvert(implicit=True).to_option() in syn.options and not syn.payload
    assert record.first_byte_time_s == pytest.approx(2 * CLIENT_SERVER_RTT_S)


def test_implicit_refusal_is_the_servers_and_ends_the_request():
    # Implicit, the SYN goes to the server: an RST is the server's answer (or the on-path proxy's
    # on its behalf), and trying the same server directly would only be refused again.
    net = build_net(ClientPolicy(scheme="mp-convert-option", implicit=True), ServerKind.CLOSED,
                    proxy_kind="mp_convert")
    record = net.request(0.0)
    assert (record.outcome, record.fallback_reason, record.detail, record.source_ports_used) == \
        ("failed", None, "refused", 1)


def test_mp_convert_socket_timing_server_refusal_arrives_as_mp_fastclose():
    # Socket timing: the proxy's stack accepted the client at once, so the server's RST reaches the
    # client, once the request is under way, as an MP_FASTCLOSE (RFC 8803 5): the request fails.
    net = build_net(ClientPolicy(scheme="mp-convert-option"), ServerKind.CLOSED, proxy_kind="mp_convert",
                    timing=ConverterTiming.SOCKET)
    record = net.request(0.0)
    assert (record.outcome, record.detail, record.source_ports_used, record.via_proxy) == \
        ("failed", "reset (MP_FASTCLOSE)", 1, True)
    assert record.setup_time_s == pytest.approx(CLIENT_PROXY_RTT_S)


def test_implicit_i_flag_revert_resets_both_legs_and_the_client_falls_back():
    # A middlebox strips MP_CAPABLE from SYN-ACKs: the client's leg falls back to TCP, the proxy
    # sees a third ACK without MP_CAPABLE and, the I flag forbidding a revert, resets both legs at
    # 80 ms. Reset before any answer: the request goes again, unsignalled, on a new port.
    net = build_net(ClientPolicy(scheme="mp-convert-option", implicit=True), ServerKind.LEGACY_DROP,
                    down=StripOptions({TcpOptionKind.MPTCP}, classes={SegmentClass.SYN_ACK}), proxy_kind="mp_convert")
    record = net.request(0.0)
    assert (record.outcome, record.fallback_reason, record.source_ports_used) == \
        ("fallback_tcp", "mp_capable_missing_synack", 2)
    assert record.first_byte_time_s == pytest.approx(0.080 + 2 * CLIENT_SERVER_RTT_S)
    assert len(net.harness.events_of("proxy", MpConvertReverted)) == 1


def test_explicit_proxy_without_mp_capable_in_its_synack_relays_plain_tcp():
    # Explicit, I flag clear: the proxy took the request (it refuses with RST), a middlebox only
    # stripped MP_CAPABLE from its SYN-ACK. Both legs of the client's connection go on as plain
    # TCP through the proxy, as Convert's do: no reset, no second port.
    net = build_net(ClientPolicy(scheme="mp-convert-option"), ServerKind.LEGACY_DROP,
                    down=StripOptions({TcpOptionKind.MPTCP}, classes={SegmentClass.SYN_ACK}), proxy_kind="mp_convert")
    record = net.request(0.0)
    assert (record.outcome, record.fallback_reason, record.via_proxy, record.mptcp) == \
        ("fallback_tcp", "mp_capable_missing_synack", True, False)
    assert (record.source_ports_used, record.rsts_sent) == (1, 0)
    assert record.first_byte_time_s == pytest.approx(2 * CLIENT_SERVER_RTT_S)


def test_mp_convert_option_with_an_ipv6_destination_does_not_fit_and_goes_direct():
    # Beside a Linux SYN (20 bytes) and MP_CAPABLE (4), MP_CONVERT(IPv6, port) needs 22 more: 46,
    # padded 48, of 40 (docs/mp-convert.md 1). The client does not even try the proxy.
    server6 = IPv6Address("2001:db8:3::1")
    net = build_net(ClientPolicy(scheme="mp-convert-option"), proxy_kind="mp_convert")
    net.client.interfaces["eth6"] = IPv6Address("2001:db8::1")
    net.harness.add("server6", ServerHost("server6", server6, ServerKind.LEGACY_DROP, rng=random.Random(4),
                                          app=ResponderApp(RESPONSE_BYTES, request_size_bytes=100)))
    net.harness.machines["router"].routes.insert(0, (ip_network("2001:db8::/64"), "c6"))
    net.harness.machines["router"].routes.insert(0, (ip_network("2001:db8:3::/64"), "s6"))
    net.harness.link("client", "eth6", "router", "c6", 0.010)
    net.harness.link("server6", "eth0", "router", "s6", 0.020)
    record = net.request(0.0, replace(REQUEST, destination=server6))
    assert (record.outcome, record.fallback_reason, record.detail) == \
        ("fallback_tcp", "signal_does_not_fit", "MP_CONVERT needs 48 option bytes of 40")
    assert (record.syns_sent, record.source_ports_used, record.attempts) == (1, 1, 1)
    assert record.first_byte_time_s == pytest.approx(2 * CLIENT_SERVER_RTT_S)
    assert net.proxy.relays == {} and net.sent("client", dst_port=PROXY_PORT) == []


def test_mp_convert_option_is_kept_on_syn_retransmissions():
    # The first SYN is lost: the retransmission must still name the destination, or the explicit
    # proxy (which needs it) would refuse it. MP_CONVERT travels with MP_CAPABLE.
    first_syn_lost = drop_matching(lambda p: p.segment.flags == TcpFlags.SYN, count=1)
    net = build_net(ClientPolicy(scheme="mp-convert-option"), ServerKind.LEGACY_DROP, up=first_syn_lost,
                    proxy_kind="mp_convert")
    record = net.request(0.0)
    assert (record.outcome, record.syns_sent, record.source_ports_used) == ("converted", 2, 1)
    assert record.setup_time_s == pytest.approx(1.0 + CLIENT_PROXY_RTT_S + PROXY_SERVER_RTT_S)


def test_socks5_server_refusal_ends_the_request_without_fallback():
    net = build_net(ClientPolicy(scheme="socks5"), ServerKind.CLOSED, proxy_kind="socks5")
    record = net.request(0.0)
    assert (record.outcome, record.converter_error, record.detail) == ("failed", 5, "socks5 reply 0x05")
    assert (record.syns_sent, record.rsts_sent, record.source_ports_used) == (1, 1, 1)
    assert net.client.proxy_state(PROXY, 1.0) is ProxyState.USABLE


def test_socks5_proxy_that_is_not_there_is_marked_off():
    net = build_net(ClientPolicy(scheme="socks5"), ServerKind.LEGACY_DROP, proxy_kind="convert")
    record = net.request(0.0, run_s=20.0)  # a converter there silently ignores a SYN without Convert data
    assert (record.outcome, record.fallback_reason, record.source_ports_used) == \
        ("fallback_tcp", "converter_syn_timeout", 2)
    assert net.client.proxy_state(PROXY, 20.0) is ProxyState.OFF


# --- 6. first-byte times per scheme on a clean path --------------------------------------------------------


@pytest.mark.parametrize("scheme, proxy_kind, setup_s, first_byte_s, outcome", [
    ("plain", "convert", CLIENT_SERVER_RTT_S, 2 * CLIENT_SERVER_RTT_S, "tcp"),
    ("mptcp", "convert", CLIENT_SERVER_RTT_S, 2 * CLIENT_SERVER_RTT_S, "fallback_tcp"),  # a legacy server
    # RFC timing: the SYN-ACK waits for the server's; the request rides in the SYN, so the first
    # byte comes a client-proxy RTT earlier than over a direct connection.
    ("convert", "convert", CLIENT_PROXY_RTT_S + PROXY_SERVER_RTT_S, CONVERTED_S, "converted"),
    ("syn-payload-eol", "mp_convert", CLIENT_PROXY_RTT_S + PROXY_SERVER_RTT_S, CONVERTED_S, "converted"),
    # The destination in an option, no SYN data: the request waits for the handshake.
    ("mp-convert-option", "mp_convert", CLIENT_PROXY_RTT_S + PROXY_SERVER_RTT_S, 2 * CLIENT_SERVER_RTT_S,
     "converted"),
    # SOCKS5: handshake, greeting, CONNECT and the proxy's own handshake, then the request: two
    # client-proxy RTTs more than a direct connection (RFC 1928, no data in the SYN).
    ("socks5", "socks5", 3 * CLIENT_PROXY_RTT_S + PROXY_SERVER_RTT_S,
     2 * CLIENT_SERVER_RTT_S + 2 * CLIENT_PROXY_RTT_S, "converted"),
])
def test_first_byte_times_per_scheme_on_a_clean_path(scheme, proxy_kind, setup_s, first_byte_s, outcome):
    net = build_net(ClientPolicy(scheme=scheme), ServerKind.LEGACY_DROP, proxy_kind=proxy_kind)
    record = net.request(0.0)
    assert record.outcome == outcome and record.fallback_reason in (None, "mp_capable_missing_synack")
    assert record.setup_time_s == pytest.approx(setup_s)
    assert record.first_byte_time_s == pytest.approx(first_byte_s)
    assert (record.syns_sent, record.rsts_sent, record.source_ports_used) == (1, 0, 1)
    assert (record.bytes_sent, record.bytes_delivered) == (100, RESPONSE_BYTES)  # signalling not counted
    assert (record.via_proxy, record.mptcp) == (outcome == "converted", outcome == "converted")
    (syn,) = [seg for _, seg in net.sent("client") if seg.flags == TcpFlags.SYN]
    assert any(o.kind == TcpOptionKind.MPTCP for o in syn.options) is (scheme != "plain")


# --- 7. converter error codes end to end ---------------------------------------------------------------------


def test_error_3_cookie_required_retry_with_the_cookie_on_a_new_port():
    net = build_net(ClientPolicy(scheme="convert"), converter={"require_cookie": True})
    record = net.request(0.0)
    assert (record.outcome, record.converter_error, record.fallback_reason) == ("converted", 3, None)
    assert (record.syns_sent, record.rsts_sent, record.source_ports_used, record.attempts) == (2, 1, 2, 2)
    first, second = client_ports(net)
    assert first != second
    # Error 3 comes in the SYN-ACK at 20 ms (the converter answers at once), the retry converts.
    assert record.first_byte_time_s == pytest.approx(CLIENT_PROXY_RTT_S + CONVERTED_S)
    later = net.request(20.0)  # the cookie is cached: one SYN
    assert (later.outcome, later.converter_error, later.source_ports_used) == ("converted", None, 1)


def test_error_64_backs_off_then_uses_the_converter_again():
    net = build_net(ClientPolicy(scheme="convert"), converter={"max_sessions": 0, "resource_backoff_s": 30})
    refused = net.request(0.0)
    assert (refused.outcome, refused.fallback_reason, refused.converter_error) == \
        ("fallback_tcp", "converter_error", 64)
    assert (refused.rsts_sent, refused.source_ports_used, refused.via_proxy) == (1, 2, False)
    assert net.client.proxy_state(PROXY, 1.0) is ProxyState.BACKOFF
    net.proxy.converter.policy = replace(net.proxy.converter.policy, max_sessions=1024)  # load gone
    within = net.request(20.0)  # back-off until 0.02 + 30 s
    assert (within.fallback_reason, within.source_ports_used, within.via_proxy) == ("converter_cached_off", 1, False)
    after = net.request(31.0)
    assert (after.outcome, after.via_proxy, after.source_ports_used) == ("converted", True, 1)


def test_error_32_not_authorized_falls_back_and_stays_off():
    net = build_net(ClientPolicy(scheme="convert"), converter={"allowed_client_prefixes": ("203.0.113.0/24",)})
    record = net.request(0.0)
    assert (record.outcome, record.converter_error, record.fallback_reason) == ("fallback_tcp", 32, "converter_error")
    assert net.client.proxy_state(PROXY, 5000.0) is ProxyState.NOT_AUTHORIZED
    assert net.request(20.0).fallback_reason == "converter_cached_off"


def test_error_96_server_refused_fails_without_fallback():
    net = build_net(ClientPolicy(scheme="convert"), ServerKind.CLOSED)
    record = net.request(0.0)
    assert (record.outcome, record.converter_error, record.detail) == ("failed", 96, "report_refused")
    assert (record.syns_sent, record.rsts_sent, record.source_ports_used) == (1, 1, 1)  # nothing went direct
    assert record.first_byte_time_s is None and record.completion_time_s is None
    assert net.client.proxy_state(PROXY, 1.0) is ProxyState.USABLE  # the converter did its job
    assert net.sent("client", dst_port=SERVER_PORT) == []


def test_a_legacy_server_on_the_converter_port_is_marked_off():
    # The configured converter address is a legacy server that queues SYN data (RFC 793) and
    # answers whatever it got: the SYN-ACK ACKs the whole payload, but what comes back is no
    # Convert message (RFC 8803 8: reset). The Convert bytes did reach that server's application:
    # the hazard of section 2.6, which RFC 8803 confines with a dedicated port and a magic number.
    net = build_net(ClientPolicy(scheme="convert"))
    impostor = ServerHost("proxy", PROXY_UP, ServerKind.LEGACY_QUEUE, rng=random.Random(2), interface="up",
                          ports=(PROXY_PORT,), app=ResponderApp(500, request_size_bytes=100))
    net.harness.add("proxy", impostor)
    record = net.request(0.0)
    assert (record.outcome, record.fallback_reason, record.rsts_sent, record.source_ports_used) == \
        ("fallback_tcp", "converter_reply_invalid", 1, 2)
    assert net.client.proxy_state(PROXY, 1.0) is ProxyState.OFF
    (stream,) = impostor.app.received.values()
    # Version 1, Total Length 6 words, magic 0x2263, then the Connect TLV and the request.
    assert stream.startswith(bytes.fromhex("01062263")) and stream.endswith(REQUEST.payload())
    assert record.first_byte_time_s == pytest.approx(2 * CLIENT_PROXY_RTT_S + 2 * CLIENT_SERVER_RTT_S)


# --- 8. bypassing the converter for an MPTCP server ---------------------------------------------------------


def test_mptcp_server_learned_through_the_converter_is_then_reached_directly():
    net = build_net(ClientPolicy(scheme="convert", mptcp_to_server=True), ServerKind.MPTCP_V1,
                    converter={"supported_kinds": MPTCP_KINDS})
    converted = net.request(0.0)
    assert (converted.outcome, converted.via_proxy, converted.mptcp) == ("converted", True, True)
    assert net.client.caches.servers[SERVER].mptcp_capable  # from the Extended TCP Header TLV
    direct = net.request(20.0)
    assert (direct.outcome, direct.via_proxy, direct.mptcp, direct.scheme) == ("mptcp", False, True, "convert")
    assert direct.first_byte_time_s == pytest.approx(2 * CLIENT_SERVER_RTT_S)
    assert net.proxy.converter.counters["sessions"] == 1  # the second request never met it


def test_mptcp_to_server_refused_by_the_converter_is_retried_without_it():
    net = build_net(ClientPolicy(scheme="convert", mptcp_to_server=True), ServerKind.MPTCP_V1)
    first = net.request(0.0)  # Error 33: the converter does not convert MPTCP (kind 30)
    assert (first.outcome, first.converter_error, first.source_ports_used) == ("converted", 33, 2)
    second = net.request(20.0)
    assert (second.outcome, second.source_ports_used, second.via_proxy) == ("converted", 1, True)
    assert not net.client.caches.server_mptcp_capable(SERVER)  # nothing learned: no bypass


# --- attempts that end in other ways ---------------------------------------------------------------------


def test_reply_deadline_of_a_failed_attempt_does_not_cut_the_fallback_short():
    # Socket timing: the converter's SYN-ACK (20 ms) starts the client's 10 s wait for the reply;
    # Error 64, sent after the third ACK, ends that attempt at 40 ms. The direct fallback then loses
    # four SYNs (at 0.04, 1.04, 3.04 and 7.04 s) and connects with the fifth at 15.04 s, after the
    # first attempt's deadline (10.02 s), which must not cut it short.
    to_server = drop_matching(lambda p: p.dst == SERVER and p.segment.flags == TcpFlags.SYN, count=4)
    net = build_net(ClientPolicy(scheme="convert"), up=to_server, timing=ConverterTiming.SOCKET,
                    converter={"max_sessions": 0})
    record = net.request(0.0, run_s=30.0)
    assert (record.outcome, record.converter_error, record.syns_sent, record.source_ports_used) == \
        ("fallback_tcp", 64, 6, 2)
    assert record.setup_time_s == pytest.approx(15.04 + CLIENT_SERVER_RTT_S)


def test_reboot_mid_request_sends_nothing_and_ends_the_request():
    net = build_net(ClientPolicy(scheme="plain"), ServerKind.LEGACY_DROP)
    net.client.connect(REQUEST, 0.0)
    net.harness.run(0.08)  # established, the request on its way
    net.client.reboot(0.08)
    net.harness.run(0.5)
    (record,) = net.client.finished
    assert (record.outcome, record.detail, record.rsts_sent) == ("failed", "host rebooted", 0)
    rst_times = [t for t, seg in net.sent("client") if seg.flags & TcpFlags.RST]
    # Nothing at the reboot; later the server's ACK and answer (at 120 ms) meet a host that knows
    # nothing of them, and the stack answers each with RST (RFC 9293 3.10.7.1).
    assert rst_times == pytest.approx([0.12, 0.12]) and net.client.rsts_for_unknown == 2


def test_short_response_then_fin_ends_the_request():
    app = ResponderApp(400, request_size_bytes=REQUEST.request_size_bytes, close_after_response=True)
    net = build_net(ClientPolicy(scheme="plain"), ServerKind.LEGACY_DROP, app=app)
    record = net.request(0.0)
    # Less than the application asked for is no success, whatever path carried it.
    assert (record.outcome, record.bytes_delivered, record.detail) == \
        ("failed", 400, "peer closed after 400 response bytes")


def test_a_blackholed_response_times_out_at_the_application():
    # Every data segment from the server is lost. The request was ACKed, so the client has nothing
    # outstanding and TCP never notices: only the application's idle timeout ends the request.
    net = build_net(ClientPolicy(scheme="plain", response_timeout_s=30.0), ServerKind.LEGACY_DROP,
                    down=DropSegments(SegmentClass.DATA))
    record = net.request(0.0, run_s=60.0)
    assert (record.outcome, record.detail, record.bytes_delivered) == ("failed", "no response for 30 s", 0)
    assert record.rsts_sent == 1  # the client aborts
    (rst_s,) = [t for t, seg in net.sent("client") if seg.flags & TcpFlags.RST]
    assert rst_s == pytest.approx(CLIENT_SERVER_RTT_S + 30.0)  # 30 s after the path was ready


def test_the_response_timeout_counts_idle_time_not_the_whole_transfer():
    # 300 kB: a window's worth arrives at 120 ms, the rest at 180 ms. Never 100 ms without a byte,
    # although the transfer takes longer than that after setup (60 ms).
    size_bytes = 300_000
    net = build_net(ClientPolicy(scheme="plain", response_timeout_s=0.1), ServerKind.LEGACY_DROP,
                    app=ResponderApp(size_bytes, request_size_bytes=REQUEST.request_size_bytes))
    record = net.request(0.0, replace(REQUEST, response_size_bytes=size_bytes))
    assert (record.outcome, record.bytes_delivered) == ("tcp", size_bytes)
    assert record.completion_time_s == pytest.approx(3 * CLIENT_SERVER_RTT_S)


def test_icmp_unreachable_server_ends_the_request():
    net = build_net(ClientPolicy(scheme="plain"), ServerKind.UNREACHABLE)
    record = net.request(0.0)
    assert (record.outcome, record.detail, record.source_ports_used) == ("failed", "unreachable (ICMP code 1)", 1)
    assert record.completion_time_s is None


def test_icmp_unreachable_converter_is_marked_off_and_the_request_goes_direct():
    net = build_net(ClientPolicy(scheme="convert"), ServerKind.LEGACY_DROP)
    # In the converter's place, a router that answers everything with ICMP host unreachable.
    net.harness.add("proxy", ServerHost("proxy", PROXY_UP, ServerKind.UNREACHABLE, rng=random.Random(3),
                                        interface="up"))
    record = net.request(0.0)
    assert (record.outcome, record.fallback_reason, record.source_ports_used) == \
        ("fallback_tcp", "converter_unreachable", 2)
    assert record.first_byte_time_s == pytest.approx(CLIENT_PROXY_RTT_S + 2 * CLIENT_SERVER_RTT_S)
    assert net.client.proxy_state(PROXY, 1.0) is ProxyState.OFF


def test_attaching_to_a_new_address_ends_requests_bound_to_the_old_one():
    net = build_net(ClientPolicy(scheme="plain"), ServerKind.LEGACY_DROP,
                    down=DropSegments(SegmentClass.DATA))  # the answer never comes: the request is in flight
    net.client.connect(REQUEST, 0.0)
    net.harness.run(1.0)
    new_address = IPv4Address("198.18.0.2")
    net.client.attach_network(1.0, {"eth0": new_address})
    net.harness.run(400.0)  # the old connection's timers are gone with it: nothing tries to send
    (record,) = net.client.finished
    assert (record.outcome, record.detail, record.rsts_sent) == ("failed", "network changed", 0)
    net.harness.hops[("router", "c")].filters.clear()
    later = net.request(400.0)
    assert later.outcome == "tcp"
    assert [key[2] for key in net.server.app.received] == [CLIENT, new_address]


class _ResettingApp(ServerApp):
    """Resets every connection as soon as the request arrives."""

    def on_data(self, host, conn, data: bytes, now: float) -> None:
        host.abort(conn, now)


def test_reset_after_the_request_went_through_fails_without_blaming_the_converter():
    net = build_net(ClientPolicy(scheme="convert"), ServerKind.LEGACY_DROP, app=_ResettingApp())
    record = net.request(0.0)
    # The server reset a relayed connection; the converter passed the reset on (RFC 8803 4.2). The
    # application sees ECONNRESET: no replay of the request elsewhere, and the converter did its job.
    assert (record.outcome, record.detail, record.source_ports_used, record.via_proxy) == ("failed", "reset", 1, True)
    assert net.client.proxy_state(PROXY, 1.0) is ProxyState.USABLE
    assert net.sent("client", dst_port=SERVER_PORT) == []


# --- invariants over random cases ------------------------------------------------------------------------


OUTCOMES = {o.value for o in Outcome}
#: (client policy, proxy kind): every scheme with the proxy it talks to, plain and MPTCP with both
#: topologies (the on-path MP_CONVERT proxy sees their SYNs too).
RANDOM_SCHEMES = (
    (ClientPolicy(scheme="plain"), "convert"),
    (ClientPolicy(scheme="plain"), "mp_convert"),
    (ClientPolicy(scheme="mptcp"), "convert"),
    (ClientPolicy(scheme="mptcp"), "mp_convert"),
    (ClientPolicy(scheme="convert"), "convert"),
    (ClientPolicy(scheme="socks5"), "socks5"),
    (ClientPolicy(scheme="mp-convert-option"), "mp_convert"),
    (ClientPolicy(scheme="syn-payload-eol"), "mp_convert"),
    (ClientPolicy(scheme="mp-convert-option", implicit=True), "mp_convert"),
    (ClientPolicy(scheme="syn-payload-eol", implicit=True), "mp_convert"),
)


@given(scheme=st.sampled_from(RANDOM_SCHEMES), middlebox=st.sampled_from(table_middleboxes()),
       server=st.sampled_from(table_servers() + (ServerKind.TFO, ServerKind.UNREACHABLE)),
       timing=st.sampled_from(list(ConverterTiming)),
       seed=st.integers(0, 2**16), fallback=st.sampled_from(list(FallbackTarget)),
       leak=st.sampled_from(list(SignalAckedAsData)), tfo=st.booleans(), mptcp_to_server=st.booleans(),
       second_at_s=st.sampled_from([1.0, 20.0, 400.0]))
def test_invariants_over_random_cases(scheme, middlebox, server, timing, seed, fallback, leak, tfo,
                                      mptcp_to_server, second_at_s):
    policy, proxy_kind = scheme
    policy = replace(policy, fallback=fallback, signal_acked_as_data=leak, tfo_to_server=tfo,
                     mptcp_to_server=mptcp_to_server)
    up, down, _ = access_box(middlebox, random.Random)
    net = build_net(policy, server, up=up, down=down, timing=timing, seed=seed, checked=True,
                    cache_policy=CachePolicy(off_reprobe_s=300.0), proxy_kind=proxy_kind)
    net.client.connect(REQUEST, 0.0)
    net.harness.run(second_at_s)
    net.client.connect(REQUEST, net.harness.now)  # a second request meets the caches the first left
    # Long enough for the slowest ending: a blackholed response gives up after response_timeout_s.
    net.harness.run(second_at_s + policy.response_timeout_s + 60.0)
    finished = [e.record for _, n, e in net.harness.events if n == "client" and isinstance(e, ConnectionFinished)]
    assert sorted(r.request_id for r in finished) == [0, 1]  # exactly one record per request
    assert finished == net.client.finished
    for record in finished:
        assert record.outcome in OUTCOMES
        assert record.source_ports_used == record.attempts >= 1
        assert record.syns_sent >= record.attempts
        assert (record.outcome == "mptcp") <= record.mptcp and (record.outcome == "converted") <= record.via_proxy
        assert (record.first_byte_time_s is None) == (record.bytes_delivered == 0)
        if record.outcome == "failed":
            assert record.completion_time_s is None
        for attempt in net.client.logical[record.request_id].attempts:
            ext = attempt.mptcp
            assert ext is None or not (ext.negotiated and ext.fallback_reason is not None)


# --- the lifecycle: scheme names, abandon, the transition table -------------------------------------


def test_scheme_names_are_checked_with_a_suggestion():
    with pytest.raises(UnknownComponentError, match=r"unknown scheme 'conver' \(did you mean convert\?\)"):
        ClientPolicy(scheme="conver")
    with pytest.raises(UnknownComponentError, match="unknown scheme 'mtcp'"):
        Request(SERVER, SERVER_PORT, scheme="mtcp")


def test_abandon_resets_the_request_and_records_it_once():
    # The server's answers never come back: the request is under way (path ready at 60 ms) when
    # the caller gives up at 1 s. The connection is reset, the record says why, and a second
    # abandon (or the late timeout) changes nothing.
    net = build_net(ClientPolicy(scheme="plain"), ServerKind.LEGACY_DROP, down=DropSegments(SegmentClass.DATA))
    request_id = net.client.connect(REQUEST, 0.0)
    net.harness.run(1.0)
    logical = net.client.logical[request_id]
    assert logical.state is LogicalState.REQUESTING and not logical.finished
    logical.abandon(1.0, "given up by the caller")
    logical.abandon(1.5, "again")
    net.harness.run(400.0)
    (record,) = net.client.finished
    assert (record.outcome, record.detail, record.rsts_sent) == ("failed", "given up by the caller", 1)
    assert logical.state is LogicalState.DONE and request_id not in net.client.unfinished
    (rst_s,) = [t for t, seg in net.sent("client") if seg.flags & TcpFlags.RST]
    assert rst_s == pytest.approx(1.0)


def test_an_illegal_request_transition_raises_and_changes_nothing():
    net = build_net(ClientPolicy(scheme="plain"), ServerKind.LEGACY_DROP)
    record = net.request(0.0)
    logical = net.client.logical[record.request_id]
    assert logical.state is LogicalState.DONE
    for state in LogicalState:
        with pytest.raises(RuntimeError, match="illegal request transition DONE"):
            logical._move(state)
        assert logical.state is LogicalState.DONE
    with pytest.raises(RuntimeError, match="started twice"):
        logical.start(1.0)
    assert net.client.finished == [record]


def test_every_request_transition_is_taken(monkeypatch):
    """The whole truth table, plus an on-path proxy that resets a reverted implicit attempt (the
    one edge the table never takes), walks every edge of LOGICAL_TRANSITIONS and no other."""
    from mpsim.proto.truth_table import all_cases

    taken: set = set()
    move = LogicalConnection._move

    def recording(self, state):
        taken.add((self.state, state))
        move(self, state)

    monkeypatch.setattr(LogicalConnection, "_move", recording)
    all_cases(rngs=random.Random)
    # As test_implicit_i_flag_revert_resets_both_legs_and_the_client_falls_back: the path was
    # ready when the on-path proxy reset both legs, and the request goes again unsignalled.
    net = build_net(ClientPolicy(scheme="mp-convert-option", implicit=True), ServerKind.LEGACY_DROP,
                    down=StripOptions({TcpOptionKind.MPTCP}, classes={SegmentClass.SYN_ACK}), proxy_kind="mp_convert")
    assert net.request(0.0).source_ports_used == 2
    table = {(source, target) for source, targets in LOGICAL_TRANSITIONS.items() for target in targets}
    assert taken == table, (table - taken, taken - table)
