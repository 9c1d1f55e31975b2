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
  asked for (outcome ``tcp`` rather than ``fallback_tcp``).

What a scheme does (hooks, each with the default that suits a scheme without a proxy):

* :meth:`start`: the request's first attempt (direct, via a proxy, or implicit);
* :meth:`open`: one attempt: the SYN's options and payload, the TCP extensions, the TCP policy;
* :meth:`on_established` and :meth:`on_reply`: the handshake done, and the bytes that come back
  before the path is ready (the proxy's reply);
* :meth:`judge_synack` (through the extension the scheme adds in :meth:`open`),
  :meth:`refused_reason`, :meth:`reply_missing_reason`, :meth:`synack_refused_reason`,
  :meth:`converted_implicitly`: how a failure or an answer is read;
* :meth:`syn`: its row of the SYN budget (mpsim/syn_budget.py), built with the wire codecs.

The hooks take the :class:`~mpsim.proto.client.LogicalConnection` and act through its public
helpers (``open_direct``, ``open_attempt``, ``path_ready``, ``fall_back``, ``finish``, ...);
docs/adding-a-scheme.md walks through writing one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from mpsim.proto.catalogue import SCHEMES
from mpsim.proto.events import FallbackReason
from mpsim.proto.tcp import TcpConnection, TcpExtension
from mpsim.wire.mp_convert import LINUX_SYN_OPTIONS, MP_CAPABLE_SYN

if TYPE_CHECKING:  # the client imports the schemes; they only name its types
    from ipaddress import IPv4Address, IPv6Address

    from mpsim.proto.client import Attempt, LogicalConnection, Proxy
    from mpsim.proto.tcp import TcpEvent


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

    # --- the SYN budget ------------------------------------------------------------------------

    def syn(self, address: IPv4Address | IPv6Address, port: int) -> SchemeSyn:
        """The SYN this scheme sends to reach ``address``:``port`` (its SYN-budget row)."""
        raise NotImplementedError(f"scheme {self.name!r} has no SYN-budget row")

    # --- opening ---------------------------------------------------------------------------------

    def start(self, lc: LogicalConnection, now: float) -> None:
        """The request's first attempt: implicit when asked and possible, else via the proxy the
        scheme needs, else to the server itself."""
        if self.proxy is None:
            self.open(lc, now, None)
        elif self.implicit_capable and lc.host.client_policy.implicit:
            self.open(lc, now, None)
        else:
            lc.open_via_proxy(now)

    def open(self, lc: LogicalConnection, now: float, proxy: Proxy | None) -> None:
        """Open one attempt: to ``proxy``, or (None) to the server itself."""
        raise NotImplementedError

    # --- answers ---------------------------------------------------------------------------------

    def on_established(self, lc: LogicalConnection, attempt: Attempt, now: float) -> None:
        """The attempt's handshake completed: by default the path is ready for the request."""
        lc.path_ready(attempt, now)

    def on_reply(self, lc: LogicalConnection, attempt: Attempt, data: bytes, now: float) -> bytes | None:
        """Bytes that came before the path was ready (a proxy's reply). Returns the application's
        bytes once the path is ready (having called ``lc.path_ready``), or None while still waiting
        or after the attempt failed."""
        return data

    def judge_synack(self, lc: LogicalConnection, attempt: Attempt, conn: TcpConnection, synack: Any) -> str | None:
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

    def __init__(self, scheme: SignallingScheme, lc: LogicalConnection, attempt: Attempt) -> None:
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
    return SCHEMES.register(scheme.name, scheme, replace=replace)
