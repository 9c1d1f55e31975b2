"""The interface every signalling scheme implements, and the record of what its first SYN carries.

A *signalling scheme* is how a client asks for its connection: plain TCP, end-to-end MPTCP, or
one of the ways of asking a proxy to convert to MPTCP (docs/design.md section 4). Each scheme is
one module of this package holding one :class:`SignallingScheme` object, registered by name in
:data:`mpsim.proto.catalogue.SCHEMES`; the client's lifecycle
(:class:`mpsim.proto.client.LogicalConnection`: attempts, fallbacks, the record) calls the
scheme's hooks and never asks which scheme it runs.

What a scheme says about itself (the contract the scenario schema, the truth table and the
experiment layer read):

* ``name``: its one name (``client.scheme`` in a scenario, ``ClientPolicy.scheme``);
* ``description``: one line;
* ``proxy``: the name of the proxy it talks to in the proxy catalogue (``None``: it talks to the
  server itself);
* ``implicit_capable``: it can send its signalling to the server itself, for an on-path proxy to
  intercept (``ClientPolicy.implicit``);
* ``plain_tcp``: it asks for plain TCP, so a plain TCP connection without a fallback is what it
  asked for (outcome ``tcp`` rather than ``fallback_tcp``);
* :meth:`truth_table_variants` and ``truth_table_rank``: the client configurations of the scheme
  the truth table (mpsim/proto/truth_table.py) compares, and where they come among the schemes'
  (by default one configuration named after the scheme, after the built-in schemes).

What a scheme does (hooks, each with the default that suits a scheme without a proxy):

* :meth:`start`: the request's first attempt (direct, via a proxy, or implicit);
* :meth:`open`: one attempt: the SYN's options and payload, the TCP extensions, the TCP policy;
* :meth:`on_established` and :meth:`on_reply`: the handshake done, and the bytes that come back
  before the path is ready (the proxy's reply);
* :meth:`judge_synack` (through the extension the scheme adds in :meth:`open`),
  :meth:`refused_reason`, :meth:`reply_missing_reason`, :meth:`synack_refused_reason`,
  :meth:`converted_implicitly`: how a failure or an answer is read;
* :meth:`syn`: its row of the SYN budget (mpsim/syn_budget.py), built with the wire codecs.

The hooks take the request's logical connection as ``lc`` and act through what
:class:`SchemeLifecycle` describes (``new_attempt``, ``open_attempt``, ``open_direct``,
``path_ready``, ``fall_back``, ``fail``, ...), and on the :class:`Attempt` records it hands out.
:class:`mpsim.proto.client.LogicalConnection` satisfies that protocol, but this package never
imports the client: the dependency runs one way, client -> schemes (docs/design.md section 9
walks through writing a scheme).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Protocol, runtime_checkable

from mpsim.proto.cache import ClientCaches
from mpsim.proto.catalogue import SCHEMES
from mpsim.proto.convert import ConvertClientPolicy
from mpsim.proto.events import FallbackReason
from mpsim.proto.mptcp import MptcpClientExtension, MptcpPolicy
from mpsim.proto.proxies import Placement
from mpsim.proto.relay import ConverterTiming
from mpsim.proto.tcp import IpAddress, TcpConnection, TcpEvent, TcpExtension, TcpPolicy
from mpsim.wire.mp_convert import LINUX_SYN_OPTIONS, MP_CAPABLE_SYN

#: A proxy's address and port, as the client is configured with it.
Proxy = tuple[IpAddress, int]


class SignalAckedAsData(enum.Enum):
    """What a client does when a host that is not a proxy ACKed its signalling as SYN data (a
    legacy stack that queues SYN data, RFC 793): the bytes are now in the server's stream.
    ``ClientPolicy.signal_acked_as_data`` holds the choice; ``syn-payload-eol`` reads it."""

    RESET = "reset"  # RST, then fall back on a new source port (the RST may be lost)
    CONTINUE = "continue"  # go on as plain TCP; the server application got the signalling bytes


@dataclass
class Attempt:
    """One TCP connection a request tried: direct to the server, or carrying a scheme's signalling
    (to a proxy, or implicit: to the server, for an on-path proxy to intercept). The lifecycle
    creates it (``lc.new_attempt``); the scheme fills in what its signalling cost and said."""

    via: SignallingScheme | None  # whose signalling it carries; None: plain TCP or MPTCP to the server
    proxy: Proxy | None = None
    implicit: bool = False  # signalling sent to the server itself (via set, proxy None)
    conn: TcpConnection | None = None
    mptcp: MptcpClientExtension | None = None
    exchange: Any = None  # the scheme's conversation with its proxy (Convert, SOCKS5)
    syn_payload: bytes = b""
    signal_bytes: int = 0  # signalling this attempt sent (Convert TLVs, EOL options, SOCKS5), not the request
    ready: bool = False
    failed: bool = False  # its failure has been dealt with (retry, fallback or the end)
    reason: FallbackReason | None = None  # why the SYN-ACK was refused, for the Closed event that follows
    aborting: bool = False  # we reset it ourselves: its Closed event is no news

    @property
    def kind(self) -> str:
        """What the attempt was, for ladders and logs: ``direct``, or the scheme whose signalling
        it carried (its name with ``_`` for ``-``, as results and ladders have always shown it)."""
        return "direct" if self.via is None else self.via.name.replace("-", "_")


# --- what a scheme may use of the client: the lifecycle implements these, schemes only name them ---
#
# Read-only members are properties, so that frozen dataclasses and plain attributes both satisfy
# them; the members a scheme assigns are plain attributes. tests/proto/test_scheme_lifecycle.py
# checks that every name a scheme module uses on ``lc`` is declared here and that the client's
# classes have every member.

@runtime_checkable
class SchemePolicy(Protocol):
    """The fields of the client's policy (:class:`mpsim.proto.client.ClientPolicy`) schemes read."""

    @property
    def implicit(self) -> bool: ...
    @property
    def upstream_mptcp(self) -> bool: ...
    @property
    def bypass_mptcp_servers(self) -> bool: ...
    @property
    def convert_info_first(self) -> bool: ...
    @property
    def tfo_to_server(self) -> bool: ...
    @property
    def mptcp_to_server(self) -> bool: ...
    @property
    def signal_acked_as_data(self) -> SignalAckedAsData: ...


@runtime_checkable
class SchemeHost(Protocol):
    """The client host (:class:`mpsim.proto.client.ClientHost`) as schemes see it: its policies and
    the state kept across requests (proxy verdicts, converters seen, TFO cookies via converters)."""

    @property
    def client_policy(self) -> SchemePolicy: ...
    @property
    def policy(self) -> TcpPolicy: ...
    @property
    def convert_policy(self) -> ConvertClientPolicy: ...
    @property
    def caches(self) -> ClientCaches: ...
    @property
    def converters_seen(self) -> set[Proxy]: ...
    @property
    def converter_tfo_cookies(self) -> dict[tuple[Proxy, IpAddress], bytes]: ...


@runtime_checkable
class SchemeRequest(Protocol):
    """Where the request goes (:class:`mpsim.proto.client.Request`)."""

    @property
    def destination(self) -> IpAddress: ...
    @property
    def port(self) -> int: ...


@runtime_checkable
class SchemeLifecycle(Protocol):
    """A request's logical connection as a scheme's hooks get it (``lc``): exactly what a scheme
    may read, set and call. :class:`mpsim.proto.client.LogicalConnection` implements it; the
    lifecycle's own transitions, timers and record stay private to the client."""

    @property
    def host(self) -> SchemeHost: ...
    @property
    def request(self) -> SchemeRequest: ...
    @property
    def payload(self) -> bytes: ...  # the request's bytes

    # What the record will say, where the scheme knows best.
    detail: str
    converter_error: int | None
    fallback_reason: FallbackReason | None
    signal_leaked: bool

    # Opening attempts.
    def attempts_left(self) -> bool: ...
    def new_attempt(self, via: SignallingScheme | None, proxy: Proxy | None = None, *,
                    implicit: bool = False) -> Attempt: ...
    def mptcp_extension(self, attempt: Attempt, policy: MptcpPolicy | None = None) -> tuple[TcpExtension, ...]: ...
    def local_address(self, remote: IpAddress) -> IpAddress: ...
    def open_attempt(self, attempt: Attempt, remote: IpAddress, port: int, now: float, *, syn_payload: bytes = b"",
                     extensions: tuple[TcpExtension, ...] = (), policy: TcpPolicy | None = None) -> None: ...
    def send_rest(self, attempt: Attempt, sent_in_syn_bytes: int, now: float) -> None: ...
    def collect(self, attempt: Attempt, now: float) -> None: ...
    def proxy_tcp_policy(self) -> TcpPolicy: ...
    def syn_data_limit_bytes(self, remote: IpAddress) -> int: ...
    def open_direct(self, now: float, *, mptcp: bool, mptcp_policy: MptcpPolicy | None = None) -> None: ...
    def open_via_proxy(self, now: float) -> None: ...
    def arm_reply_deadline(self, now: float) -> None: ...

    # Verdicts.
    def path_ready(self, attempt: Attempt, now: float) -> None: ...
    def abort(self, attempt: Attempt, now: float) -> None: ...
    def fall_back(self, now: float, reason: FallbackReason) -> None: ...
    def fail(self, now: float, detail: str) -> None: ...


@dataclass(frozen=True, slots=True)
class SchemeSyn:
    """The first SYN a scheme sends for one destination, and the messages it must still exchange.

    ``options`` is the SYN's option list as a Linux client sends it (``LINUX_SYN_OPTIONS`` plus the
    scheme's own); ``pre_request_messages`` are (label, bytes) the client sends after the
    handshake, each awaiting the proxy's reply, before the application's request may go (SOCKS5's
    greeting and CONNECT). ``note`` says in words what the SYN carries.
    """

    scheme: str
    options: tuple
    payload: bytes
    note: str
    pre_request_messages: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class TableVariant:
    """One client configuration of a scheme that the truth table compares (one block of rows of
    docs/truth-table.md): its label, the client's policy (``ClientPolicy`` fields besides
    ``scheme``, which is the declaring scheme's name), the proxy's timing and where the proxy sits.
    Plain data, so that this package need not import the client."""

    label: str
    policy: Mapping[str, Any] = field(default_factory=dict)
    timing: ConverterTiming = ConverterTiming.RFC
    placement: Placement = Placement.BESIDE

    def __post_init__(self) -> None:
        if not isinstance(self.label, str) or not self.label or "\n" in self.label:
            raise ValueError(f"a truth-table variant needs a one-line label, not {self.label!r}")
        if "scheme" in self.policy:
            raise ValueError(f"truth-table variant {self.label!r}: the scheme is the one declaring it, "
                             f"not a policy field")
        # Read-only, so the declaration a scheme hands out cannot be changed by a reader.
        object.__setattr__(self, "policy", MappingProxyType(dict(self.policy)))


#: A Linux client's SYN options with MP_CAPABLE, as every MPTCP-speaking scheme sends them.
MPTCP_SYN_OPTIONS = (*LINUX_SYN_OPTIONS, MP_CAPABLE_SYN)


class SignallingScheme:
    """One signalling scheme. Subclass it, set the class attributes, override the hooks you need,
    and register one instance with :func:`register`."""

    name: ClassVar[str]
    description: ClassVar[str]
    proxy: ClassVar[str | None] = None
    implicit_capable: ClassVar[bool] = False
    plain_tcp: ClassVar[bool] = False
    #: Why a refused or reset attempt to this scheme's proxy falls back (a direct one does not).
    proxy_refused_reason: ClassVar[FallbackReason] = FallbackReason.CONVERTER_REFUSED
    #: Where the scheme's variants come in the truth table: by rank, then in registration order.
    #: The built-in schemes hold 0 to 5 (the order docs/truth-table.md has always shown); the
    #: default puts a new scheme after them.
    truth_table_rank: ClassVar[int] = 100

    # --- the truth table -------------------------------------------------------------------------

    def truth_table_variants(self) -> tuple[TableVariant, ...]:
        """The client configurations of this scheme the truth table compares, in table order: by
        default one, named after the scheme, with the default policy and an RFC-timed proxy beside
        the router."""
        return (TableVariant(self.name),)

    # --- the SYN budget ------------------------------------------------------------------------

    def syn(self, address: IpAddress, port: int) -> SchemeSyn:
        """The SYN this scheme sends to reach ``address``:``port`` (its SYN-budget row)."""
        raise NotImplementedError(f"scheme {self.name!r} has no SYN-budget row")

    # --- opening ---------------------------------------------------------------------------------

    def start(self, lc: SchemeLifecycle, now: float) -> None:
        """The request's first attempt: implicit when asked and possible, else via the proxy the
        scheme needs, else to the server itself."""
        if self.proxy is None:
            self.open(lc, now, None)
        elif self.implicit_capable and lc.host.client_policy.implicit:
            self.open(lc, now, None)
        else:
            lc.open_via_proxy(now)

    def open(self, lc: SchemeLifecycle, now: float, proxy: Proxy | None) -> None:
        """Open one attempt: to ``proxy``, or (None) to the server itself."""
        raise NotImplementedError

    # --- answers ---------------------------------------------------------------------------------

    def on_established(self, lc: SchemeLifecycle, attempt: Attempt, now: float) -> None:
        """The attempt's handshake completed: by default the path is ready for the request."""
        lc.path_ready(attempt, now)

    def on_reply(self, lc: SchemeLifecycle, attempt: Attempt, data: bytes, now: float) -> bytes | None:
        """Bytes that came before the path was ready (a proxy's reply). Returns the application's
        bytes once the path is ready (having called ``lc.path_ready``), or None while still waiting
        or after the attempt failed."""
        return data

    def judge_synack(self, lc: SchemeLifecycle, attempt: Attempt, conn: TcpConnection, synack: Any) -> str | None:
        """A reason to refuse the SYN-ACK (the connection is reset; set ``attempt.reason`` to say
        why it falls back), or None to accept it. Called only if :meth:`open` added a
        :class:`SynAckJudge` to the attempt's extensions."""
        return None

    def converted_implicitly(self, attempt: Attempt) -> bool:
        """Whether an implicit attempt's SYN-ACK shows an on-path proxy converted it."""
        return False

    # --- reading failures -------------------------------------------------------------------------

    def refused_reason(self, attempt: Attempt, event: TcpEvent) -> FallbackReason:
        """Why a reset or unanswered attempt to the proxy falls back (``event`` is ResetReceived or
        TimedOut; a timeout is read by the lifecycle before this is asked)."""
        return self.proxy_refused_reason

    def reply_missing_reason(self, attempt: Attempt) -> FallbackReason:
        """Why the attempt falls back when the proxy's reply did not come (or the peer closed first)."""
        return FallbackReason.CONVERTER_REPLY_MISSING

    def synack_refused_reason(self, attempt: Attempt) -> FallbackReason | None:
        """Why an attempt whose SYN-ACK an extension refused falls back, if the scheme knows."""
        return None

    def __repr__(self) -> str:
        return f"<scheme {getattr(self, 'name', type(self).__name__)}>"


class SynAckJudge(TcpExtension):
    """Asks the scheme to judge the attempt's SYN-ACK (:meth:`SignallingScheme.judge_synack`);
    a reason returned refuses it, and the connection is reset."""

    def __init__(self, scheme: SignallingScheme, lc: SchemeLifecycle, attempt: Attempt) -> None:
        self.scheme, self.lc, self.attempt = scheme, lc, attempt

    def on_synack(self, conn: TcpConnection, synack: Any) -> str | None:
        return self.scheme.judge_synack(self.lc, self.attempt, conn, synack)


def register(scheme: SignallingScheme, *, replace: bool = False) -> SignallingScheme:
    """Register ``scheme`` in :data:`SCHEMES` under its name, after checking the contract."""
    for attribute, kind in (("name", str), ("description", str)):
        if not isinstance(getattr(scheme, attribute, None), kind) or not getattr(scheme, attribute):
            raise ValueError(f"a signalling scheme needs a non-empty string {attribute}, {scheme!r} has none")
    if "\n" in scheme.description:
        raise ValueError(f"scheme {scheme.name!r}: the description is one line")
    if scheme.proxy is not None and not isinstance(scheme.proxy, str):
        raise ValueError(f"scheme {scheme.name!r}: proxy is a proxy name or None, not {scheme.proxy!r}")
    variants = scheme.truth_table_variants()
    if not isinstance(variants, tuple) or not variants or not all(isinstance(v, TableVariant) for v in variants):
        raise ValueError(f"scheme {scheme.name!r}: truth_table_variants() returns a non-empty tuple of "
                         f"TableVariant, not {variants!r}")
    if len({v.label for v in variants}) != len(variants):
        raise ValueError(f"scheme {scheme.name!r}: truth-table variant labels repeat: {[v.label for v in variants]}")
    if type(scheme.truth_table_rank) is not int:
        raise ValueError(f"scheme {scheme.name!r}: truth_table_rank is an int, not {scheme.truth_table_rank!r}")
    return SCHEMES.register(scheme.name, scheme, replace=replace)
