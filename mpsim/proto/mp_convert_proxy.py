"""The MP_CONVERT proxy: the MPTCP Conversion Point (MCP) of the pre-RFC 8803 "plain mode" drafts.

draft-boucadair-mptcp-plain-mode (2015-2017) had a client name the destination in an MPTCP option,
MP_CONVERT, and an MCP relay the MPTCP connection to a plain TCP server; draft-peirens-mptcp-
transparent put the MCP on the path instead. No text of either survives here (docs/protocols.md 2.2 and
9, items 1-2, [U]), so the behaviour below is **mpsim's definition**, chosen to be as close to RFC
8803 as the signalling allows (the wire layout is docs/mp-convert.md's).

Modes
-----

===========  ==============================  ===================================  ===========================
mode         the client's SYN                the proxy takes it when              destination
===========  ==============================  ===================================  ===========================
option       to proxy:P; options MP_CAPABLE  it arrives on an explicit port P     A:p, or A:P without p
             and MP_CONVERT(A[, p])          with a valid MP_CONVERT holding A
syn_payload  to proxy:P; payload = option-   same, and no MP_CONVERT in the       A:p or A:P; the signalling
             formatted MP_CONVERT(A[, p]),   options: the payload decodes         and its EOL are consumed,
             EOL, then data                  (docs/mp-convert.md 2)               the data after them relayed
implicit     to S:s (the server); options    it crosses the proxy (not addressed  S:s, from the IP and TCP
             MP_CAPABLE and MP_CONVERT with  to it) holding MP_CAPABLE and        headers
             I set and no address            MP_CONVERT(I) without an address;
                                             with ``intercept_any_mp_capable``
                                             any MP_CAPABLE SYN without an
                                             MP_CONVERT address
===========  ==============================  ===================================  ===========================

* **The client leg** is MPTCP, terminated by the proxy (an :class:`MptcpServerExtension`, which
  answers MP_CAPABLE). Explicit: from the proxy's own address. Implicit: the proxy answers *as
  the server* (S:s) and the **server leg starts from the client's own C:c**: full address
  preservation (RFC 8803 4.4.1, C == T), so the server sees the 4-tuple it would have seen
  without the proxy; packets that match no session are forwarded unchanged (the host has a
  client-side interface and server-side ones, and routes between them). Only SYNs arriving on the
  client side are intercepted: incoming conversion (RFC 8803 4.2's PCP-driven case) is out of
  scope. Explicit modes use address sharing: the server leg starts from the proxy's server-side
  address.
* **The server leg** offers MPTCP (``mptcp_downstream``) and continues as plain TCP when the
  server does not answer MP_CAPABLE (RFC 8684 fallback): "plain mode" is the reason the proxy
  exists, MPTCP to MPTCP is the bonus. The proxy never lets the client bypass it.
* **The header option wins over the payload**: with a valid MP_CONVERT in the options, the SYN
  payload is the client's data, not signalling (so a TFO client's first byte 0x00 is not eaten,
  docs/mp-convert.md 2 "Ambiguity"). The implicit proxy reads options only: the payload of a
  SYN to somebody else's server is that server's business.
* **SYN data**: the explicit proxy accepts it (as an RFC 8803 converter does, 4.2: a dedicated
  address, no TFO cookie); its SYN-ACK acknowledges the whole payload, signalling included (it
  occupies sequence space, docs/mp-convert.md 2). The implicit proxy drops it (its SYN-ACK
  acknowledges ISN + 1, as Linux without TFO; a Linux TFO client resends the data).

The I flag ("this is an MPTCP connection: do not revert it to TCP")
--------------------------------------------------------------------

1. *It is the implicit interception trigger*: an on-path proxy converts a SYN that is not
   addressed to it only when the client said so (I set), even though the server may well be
   MPTCP-capable itself: with I the client asks for the proxy's MPTCP connection, not for
   end-to-end MPTCP (the link-bonding use of draft-peirens: every subflow ends at the
   aggregation point). An MP_CONVERT that carries an address is an explicit request for another
   proxy and is forwarded untouched, whatever its flags.
2. *It forbids a plain-TCP client leg*: with I set, a SYN without MP_CAPABLE is refused (explicit:
   RST; implicit: not intercepted), and a client leg that falls back to TCP after the SYN (the
   third ACK without MP_CAPABLE, data without DSS: RFC 8684 3.7) makes the proxy **reset both
   legs** instead of relaying plain TCP (``reset_on_revert``; the client then retries as it sees
   fit). Without I, a client leg that is or becomes plain TCP is relayed as plain TCP.

Refusals and failures: there is no error TLV, so every refusal is an RST
------------------------------------------------------------------------

==============================================  ==========================  ===================
situation                                       explicit proxy              implicit proxy
==============================================  ==========================  ===================
no MP_CONVERT (stripped by a middlebox), no     RST, ``NO_SIGNAL``          forwarded untouched
payload signalling
odd MP_CONVERT (flags and length disagree, R    RST, ``MALFORMED_SIGNAL``   forwarded untouched
set, two of them), undecodable payload
MP_CONVERT without an address                   RST, ``NO_DESTINATION``     intercepted (I set)
I set, no MP_CAPABLE                            RST, ``MPTCP_REQUIRED``     forwarded untouched
the destination is the proxy itself             RST, ``LOOP``               --
no interface of the destination's family        RST (``NO_ROUTE``)          not intercepted
server RST, ICMP unreachable, no SYN-ACK        RST to the client           RST to the client
within ``connect_timeout_s``
server RST while relaying                       MP_FASTCLOSE (RST if the    same
                                                client leg is plain TCP)
client leg falls back to TCP with I set         RST on both legs            RST on both legs
==============================================  ==========================  ===================

Timing (``policy.timing``, :class:`~mpsim.proto.relay.ConverterTiming`): RFC 8803's by default:
the client's SYN-ACK (with MP_CAPABLE) is withheld until the server's SYN-ACK arrived, so the
client is established after client-proxy RTT + proxy-server RTT, and a refusal is an RST
answering the SYN (the client sees "connection refused" exactly as from a closed port); the
server-side SYN is retransmitted only when the client retransmits its own (RFC 8803 9.3).
Socket timing answers the SYN at once (a Linux MPTCP listener with TFO_SERVER_COOKIE_NOT_REQD) and
resets the established client leg when the server fails (MP_FASTCLOSE once the leg is MPTCP and
the server answered RST, RFC 8803 5).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mpsim.proto.events import FellBackToTcp
from mpsim.proto.host import Acceptance, Host, Listener, Transmit
from mpsim.proto.mptcp import MptcpClientExtension, MptcpPolicy, MptcpServerExtension
from mpsim.proto.relay import (
    AcceptUpstream,
    ConverterTiming,
    DownstreamFailure,
    OpenDownstream,
    Relay,
    RelayHost,
    RelaySession,
    Report,
    ResetDownstream,
    ResetUpstream,
    UpstreamResetReason,
    mptcp_fastclose_or_reset,
)
from mpsim.proto.tcp import IpAddress, Rng, SynDataMode, TcpConnection, TcpPolicy
from mpsim.wire.errors import MalformedError
from mpsim.wire.mp_convert import MpConvert, mp_convert_from_option
from mpsim.wire.mptcp import MpCapable
from mpsim.wire.segment import IpPacket
from mpsim.wire.syn_payload import decode_syn_payload, signalling_sequence_bytes

Endpoint = tuple[IpAddress, int]


class SignallingMode(enum.Enum):
    """How the proxy learned the destination."""

    OPTION = "option"  # MP_CONVERT in the SYN's TCP options (scheme mp-convert-option)
    SYN_PAYLOAD = "syn_payload"  # EOL-delimited signalling opening the SYN payload (syn-payload-eol)
    IMPLICIT = "implicit"  # on the path: the destination is the SYN's own


class MpConvertRejection(enum.Enum):
    """Why a SYN is not converted (explicit proxy: answered with RST; implicit: forwarded)."""

    NO_SIGNAL = "no_signal"  # no MP_CONVERT anywhere (a middlebox stripped it)
    MALFORMED_SIGNAL = "malformed_signal"  # an odd MP_CONVERT, two of them, an undecodable payload
    NO_DESTINATION = "no_destination"  # an explicit request without an address
    MPTCP_REQUIRED = "mptcp_required"  # I set but no MP_CAPABLE: the client leg would be plain TCP
    LOOP = "loop"  # the destination is the proxy itself


@dataclass(frozen=True, slots=True)
class MpConvertRequest:
    """What a SYN asks the proxy: the destination, how it was said, whether the I flag was set,
    and how many SYN payload bytes the signalling took (they are not relayed)."""

    destination: Endpoint
    mode: SignallingMode
    implicit_flag: bool = False
    signalling_bytes: int = 0


# --- events ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MpConvertProxied:
    """The fate of a conversion is known: ``failure`` None means the server accepted
    (``server_mptcp``: its SYN-ACK carried MP_CAPABLE, so the server leg is MPTCP too)."""

    client: Endpoint
    destination: Endpoint
    mode: SignallingMode
    failure: DownstreamFailure | None = None
    server_mptcp: bool = False


@dataclass(frozen=True, slots=True)
class MpConvertRejected:
    """A SYN the proxy did not convert: answered with RST (explicit) or forwarded (implicit)."""

    client: Endpoint
    reason: MpConvertRejection
    forwarded: bool


@dataclass(frozen=True, slots=True)
class MpConvertReverted:
    """The client leg fell back to TCP although the I flag forbade it: both legs were reset."""

    client: Endpoint
    destination: Endpoint


# --- reading the signalling (pure functions) ----------------------------------------------------------


def _single(candidates: list[MpConvert]) -> MpConvert | None:
    if len(candidates) > 1:
        raise MalformedError(f"{len(candidates)} MP_CONVERT options: the destination is ambiguous", 0)
    return candidates[0] if candidates else None


def _option_signal(options: Sequence[Any]) -> MpConvert | None:
    """The SYN's MP_CONVERT option, None without one; MalformedError for an odd one or two."""
    return _single([c for o in options if (c := mp_convert_from_option(o)) is not None])


def _offers_mptcp(packet: IpPacket) -> bool:
    return any(isinstance(o, MpCapable) for o in packet.segment.options)


def read_explicit_request(syn: IpPacket, *, read_option: bool = True, read_syn_payload: bool = True,
                          own_addresses: Sequence[IpAddress] = ()) -> MpConvertRequest | MpConvertRejection:
    """What a SYN addressed to the explicit proxy asks for (see the module doc's tables)."""
    seg = syn.segment
    try:
        convert = _option_signal(seg.options) if read_option else None
        mode, signalling_bytes = SignallingMode.OPTION, 0
        if convert is None and read_syn_payload and seg.payload:
            signal = decode_syn_payload(seg.payload)
            convert = _single([c for o in signal.options if (c := mp_convert_from_option(o)) is not None])
            mode, signalling_bytes = SignallingMode.SYN_PAYLOAD, signalling_sequence_bytes(signal)
    except MalformedError:
        return MpConvertRejection.MALFORMED_SIGNAL
    if convert is None:
        return MpConvertRejection.NO_SIGNAL
    if convert.address is None:
        return MpConvertRejection.NO_DESTINATION
    if convert.implicit and not _offers_mptcp(syn):
        return MpConvertRejection.MPTCP_REQUIRED
    if convert.address in own_addresses:
        return MpConvertRejection.LOOP
    port = seg.dst_port if convert.port is None else convert.port
    return MpConvertRequest((convert.address, port), mode, convert.implicit, signalling_bytes)


def read_implicit_request(syn: IpPacket, *, intercept_any_mp_capable: bool = False
                          ) -> MpConvertRequest | MpConvertRejection | None:
    """What a SYN crossing the on-path proxy asks for: a request to intercept, a rejection (an
    odd MP_CONVERT: forwarded, but reported), or None (not for the proxy: forwarded silently)."""
    if not _offers_mptcp(syn):
        return None
    try:
        convert = _option_signal(syn.segment.options)
    except MalformedError:
        return MpConvertRejection.MALFORMED_SIGNAL
    if convert is not None and convert.address is not None:
        return None  # an explicit request for the proxy it is addressed to
    implicit_flag = convert is not None and convert.implicit
    if not (implicit_flag or intercept_any_mp_capable):
        return None
    return MpConvertRequest((syn.dst, syn.segment.dst_port), SignallingMode.IMPLICIT, implicit_flag)


# --- policy and session --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MpConvertProxyPolicy:
    """The proxy's knobs (the module doc says what each choice means)."""

    explicit_ports: tuple[int, ...] = ()  # the ports the explicit service listens on; () = none
    read_option: bool = True  # explicit: MP_CONVERT in the TCP options
    read_syn_payload: bool = True  # explicit: EOL-delimited MP_CONVERT in the SYN payload
    implicit: bool = False  # intercept on the path (needs a client-side and a server-side interface)
    intercept_any_mp_capable: bool = False  # implicit: also SYNs with MP_CAPABLE but no MP_CONVERT
    timing: ConverterTiming = ConverterTiming.RFC
    connect_timeout_s: float = 30.0  # no SYN-ACK from the server by then: RST the client
    mptcp_downstream: bool = True  # offer MP_CAPABLE to the server too
    reset_on_revert: bool = True  # I set and the client leg fell back to TCP: reset both legs

    def __post_init__(self) -> None:
        if not self.explicit_ports and not self.implicit:
            raise ValueError("an MP_CONVERT proxy needs explicit_ports, implicit=True, or both")
        if self.explicit_ports and not (self.read_option or self.read_syn_payload):
            raise ValueError("the explicit service must read the option, the SYN payload, or both")
        if self.connect_timeout_s <= 0:
            raise ValueError("connect_timeout_s must be > 0")


class MpConvertSessionState(enum.Enum):
    CONNECTING_DOWNSTREAM = "connecting_downstream"
    RELAYING = "relaying"
    DONE = "done"


_M = MpConvertSessionState
#: The session's state changes and their causes (transitions as data, as ConverterSession's).
MP_CONVERT_SESSION_TRANSITIONS: dict[MpConvertSessionState, dict[MpConvertSessionState, str]] = {
    _M.CONNECTING_DOWNSTREAM: {
        _M.RELAYING: "server SYN-ACK: release the client's SYN-ACK (RFC timing)",
        _M.DONE: "server RST, ICMP unreachable or connect timeout (RST the client), the client left, "
                 "or its MPTCP fell back with I set"},
    _M.RELAYING: {_M.DONE: "both directions closed, a reset on either side, or a revert with I set"},
    _M.DONE: {},
}


class MpConvertSession(RelaySession):
    """The proxy's logic for one converted connection, on the byte stream. The destination came
    with the SYN, so the session starts by opening the server leg (no request phase)."""

    CONNECTING = _M.CONNECTING_DOWNSTREAM
    RELAYING = _M.RELAYING
    DONE = _M.DONE
    TRANSITIONS = MP_CONVERT_SESSION_TRANSITIONS

    def __init__(self, request: MpConvertRequest, client: Endpoint, policy: MpConvertProxyPolicy,
                 now: float) -> None:
        super().__init__(_M.CONNECTING_DOWNSTREAM, timing=policy.timing,
                         deadline_s=now + policy.connect_timeout_s)
        self.request = request
        self.client = client
        self.policy = policy
        self._signalling_left_bytes = request.signalling_bytes
        self._decide(OpenDownstream(*request.destination))

    def receive_upstream(self, data: bytes, now: float) -> None:
        # The signalling opens the SYN payload: only what follows its EOL is the client's.
        cut = min(self._signalling_left_bytes, len(data))
        self._signalling_left_bytes -= cut
        super().receive_upstream(data[cut:], now)

    def upstream_fell_back(self, now: float) -> None:
        if self.done or not (self.request.implicit_flag and self.policy.reset_on_revert):
            return
        self._decide(ResetDownstream())
        self._decide(ResetUpstream(UpstreamResetReason.UPSTREAM_REVERTED))
        self._decide(Report(MpConvertReverted(self.client, self.request.destination)))
        self._end()

    def _on_connected(self, server_synack_options: tuple) -> None:
        if self.timing is ConverterTiming.RFC:
            self._decide(AcceptUpstream())  # the withheld SYN-ACK, MP_CAPABLE added by the extension
        server_mptcp = any(isinstance(o, MpCapable) for o in server_synack_options)
        self._decide(Report(MpConvertProxied(self.client, self.request.destination, self.request.mode,
                                             server_mptcp=server_mptcp)))

    def _on_refused(self, failure: DownstreamFailure, icmp_code: int | None) -> None:
        reason = (UpstreamResetReason.DOWNSTREAM_RESET if failure is DownstreamFailure.RESET
                  else UpstreamResetReason.DOWNSTREAM_FAILED)
        self._decide(ResetUpstream(reason))  # no error TLV in these drafts: an RST says it all
        self._decide(Report(MpConvertProxied(self.client, self.request.destination, self.request.mode, failure)))


# --- the host ------------------------------------------------------------------------------------------


class _Interceptor:
    """The proxy's listener for SYNs addressed to others (see MpConvertProxyHost.foreign_listener)."""

    def __init__(self, proxy: MpConvertProxyHost) -> None:
        self.proxy = proxy

    def on_syn(self, host: Host, packet: IpPacket, now: float) -> Acceptance | None:
        return self.proxy._intercept(host, packet, now)


class MpConvertProxyHost(RelayHost):
    """An MP_CONVERT proxy (see the module doc): explicit on ``policy.explicit_ports`` of its
    addresses, implicit on the path between ``client_interface`` and ``server_interfaces``.

    Packets that are neither for the proxy nor for an intercepted connection are forwarded from
    the client-side interface to the server-side interface of the destination's family, and
    back. Packets of intercepted connections carry foreign addresses (the server's towards the
    client, the client's towards the server) and leave on the side of their destination, which
    the host learns from the sources of the packets it receives.

    Counters (``mib``): ``MpConvertIntercepted``, ``MpConvertRejected_<reason>`` (a
    :class:`MpConvertRejection` value), ``IpForwDatagrams``, ``IpOutNoRoutes``, and the MPTCP ones
    of both legs.
    """

    def __init__(self, name: str, interfaces: dict[str, IpAddress], *, rng: Rng, client_interface: str,
                 server_interfaces: Sequence[str], policy: MpConvertProxyPolicy, tcp_policy: TcpPolicy | None = None,
                 mptcp_policy: MptcpPolicy | None = None) -> None:
        super().__init__(name, interfaces, rng=rng, server_interfaces=server_interfaces, timing=policy.timing,
                         tcp_policy=tcp_policy, upstream_extensions=self._client_leg_mptcp,
                         downstream_extensions=self._server_leg_mptcp if policy.mptcp_downstream else None,
                         on_downstream_reset=mptcp_fastclose_or_reset)
        if client_interface not in interfaces or client_interface in server_interfaces:
            raise ValueError(f"{name}: client_interface {client_interface!r} must be an interface of its own")
        self.proxy_policy = policy
        self.mptcp_policy = mptcp_policy
        self.client_interface = client_interface
        self._side: dict[IpAddress, str] = {}  # address -> the interface it is reached through
        for port in policy.explicit_ports:
            self.listen(port, self)
        self._interceptor = _Interceptor(self)

    def _client_leg_mptcp(self, syn: IpPacket) -> tuple:
        return (MptcpServerExtension(rng=self.rng, mib=self.mib, policy=self.mptcp_policy),)

    def _server_leg_mptcp(self, request: OpenDownstream) -> tuple:
        return (MptcpClientExtension(rng=self.rng, mib=self.mib, policy=self.mptcp_policy),)

    # --- explicit ---------------------------------------------------------------------------------

    def on_syn(self, host: Host, packet: IpPacket, now: float) -> Acceptance | None:
        """A SYN to an explicit port: convert it, or refuse it (None: the host answers RST)."""
        p = self.proxy_policy
        request = read_explicit_request(packet, read_option=p.read_option, read_syn_payload=p.read_syn_payload,
                                        own_addresses=tuple(self.interfaces.values()))
        client = (packet.src, packet.segment.src_port)
        if isinstance(request, MpConvertRejection):
            self.mib[f"MpConvertRejected_{request.value}"] += 1
            self.emit(MpConvertRejected(client, request, forwarded=False))
            return None
        return self.accept(MpConvertSession(request, client, p, now), packet, syn_data_mode=SynDataMode.ACCEPT)

    # --- implicit: interception and forwarding ------------------------------------------------------

    def receive(self, port: str, packet: Any, now: float) -> None:
        if isinstance(packet, IpPacket):
            self._side[packet.src] = port
            # Our own addresses, intercepted connections (foreign addresses, adopted through
            # foreign_listener, TIME-WAIT reopening included) and forwarding (not_ours): all Host's.
            super().receive(port, packet, now)
        elif packet.dst in self.interfaces.values() or self._quotes_ours(packet):
            super().receive(port, packet, now)
        else:  # an ICMP error about someone else's connection
            self._forward(port, packet)
            self._settle(packet, now)

    def _quotes_ours(self, message: Any) -> bool:
        """An ICMP error about one of our connections (intercepted ones have foreign addresses)."""
        original = getattr(message, "original", None)
        return original is not None and (original.src, original.segment.src_port, original.dst,
                                         original.segment.dst_port) in self.connections

    def foreign_listener(self, port: str, packet: IpPacket) -> Listener | None:
        """SYNs crossing from the client side, when the proxy is on the path (implicit mode)."""
        if self.proxy_policy.implicit and port == self.client_interface:
            return self._interceptor
        return None

    def not_ours(self, port: str, packet: IpPacket, now: float) -> None:
        self._forward(port, packet)

    def may_open_from(self, local_addr: IpAddress) -> bool:
        # Address preservation (RFC 8803 4.4.1): on the path, the server leg uses the client's address.
        return self.proxy_policy.implicit or super().may_open_from(local_addr)

    def _intercept(self, host: Host, packet: IpPacket, now: float) -> Acceptance | None:
        """Convert a SYN crossing the proxy, if it asks for it; None: forward it."""
        request = read_implicit_request(packet, intercept_any_mp_capable=self.proxy_policy.intercept_any_mp_capable)
        client = (packet.src, packet.segment.src_port)
        if isinstance(request, MpConvertRejection):
            self.mib[f"MpConvertRejected_{request.value}"] += 1
            self.emit(MpConvertRejected(client, request, forwarded=True))
            return None
        server_side = self._server_interface_for(packet.dst)
        if request is None or server_side is None:
            return None
        self._side[packet.dst] = server_side
        self.mib["MpConvertIntercepted"] += 1
        return self.accept(MpConvertSession(request, client, self.proxy_policy, now), packet,
                           syn_data_mode=SynDataMode.DROP)

    def open_downstream(self, relay: Relay, request: OpenDownstream, now: float) -> TcpConnection | None:
        if relay.session.request.mode is not SignallingMode.IMPLICIT:
            return super().open_downstream(relay, request, now)
        # Address preservation (RFC 8803 4.4.1): the server leg is the client's own 4-tuple.
        client_addr, client_port = relay.client
        if (client_addr, client_port, request.address, request.port) in self.connections:
            return None
        return self.open(relay, client_addr, request.address, request.port, now, local_port=client_port,
                         extensions=self.downstream_extensions_for(request), policy=self.downstream_policy)

    def _server_interface_for(self, address: IpAddress) -> str | None:
        return next((i for i in self.server_interfaces if self.interfaces[i].version == address.version), None)

    def forward_port(self, port: str, destination: IpAddress) -> str | None:
        """The interface a packet arriving on ``port`` for ``destination`` (not ours, not
        intercepted) is forwarded on: client side to a server side, anything else to the client
        side (None: no server interface of its family)."""
        return self.client_interface if port != self.client_interface else self._server_interface_for(destination)

    def _forward(self, port: str, packet: Any) -> None:
        out = self.forward_port(port, packet.dst)
        if out is None:
            self.mib["IpOutNoRoutes"] += 1
            return
        self.mib["IpForwDatagrams"] += 1
        self._out.append(Transmit(out, packet))

    def route(self, packet: IpPacket) -> str:
        if packet.src in self.interfaces.values():
            return super().route(packet)
        return self._side[packet.dst]  # an intercepted connection speaks with a foreign address

    # --- what the extensions conclude ---------------------------------------------------------------

    def on_extension_event(self, relay: Relay, conn: TcpConnection, event: Any, now: float) -> None:
        super().on_extension_event(relay, conn, event, now)
        if conn is relay.upstream and isinstance(event, FellBackToTcp):
            relay.session.upstream_fell_back(now)  # the I flag may forbid relaying plain TCP


# --- registration: the "mp-convert" proxy (mpsim/proto/proxies.py) ---------------------------------------

from mpsim.proto.catalogue import PROXIES  # noqa: E402  (registration lines stay together at the bottom)
import mpsim.proto.convert  # noqa: E402,F401  (registered first whichever proxy module is imported first)
from mpsim.proto.proxies import ProxyEntry, ProxySettings  # noqa: E402


def _create_mp_convert_proxy(name: str, addresses: dict[str, IpAddress], rng: Rng,
                             settings: ProxySettings) -> MpConvertProxyHost:
    """Explicit service on its own address; on the path, implicit interception as well."""
    defaults = MpConvertProxyPolicy(explicit_ports=(settings.port,))
    policy = MpConvertProxyPolicy(explicit_ports=(settings.port,), implicit=settings.on_path, timing=settings.timing,
                                  connect_timeout_s=defaults.connect_timeout_s if settings.connect_timeout_s is None
                                  else settings.connect_timeout_s)
    return MpConvertProxyHost(name, addresses, rng=rng, client_interface="in" if settings.on_path else "up",
                              server_interfaces=("down",), policy=policy)


PROXIES.register("mp-convert", ProxyEntry("mp-convert", "MP_CONVERT proxy",
                                          "MP_CONVERT proxy (explicit, or implicit on the path)",
                                          _create_mp_convert_proxy, on_path=True))
