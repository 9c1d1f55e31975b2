"""``mpsim converter serve`` (and ``python -m mpsim.live.serve``): the daemon's command line.

It parses the options into a :class:`~mpsim.live.converter.ServeConfig` and runs one
:class:`~mpsim.live.converter.ConverterDaemon`, or ``--workers N`` of them through
:mod:`mpsim.live.workers`. Kept apart from the daemon so that the workers' supervisor, which
imports the daemon, is not imported by it (tests/test_layering.py forbids import cycles).
"""

from __future__ import annotations

import argparse
import sys
from ipaddress import IPv4Address, IPv6Address

from mpsim.live.converter import (
    EXIT_RUNTIME_ERROR,
    EXIT_USER_ERROR,
    ConfigError,
    RelayMode,
    ServeConfig,
    run_daemon,
)
from mpsim.live.sockets import KernelSettingError, parse_endpoint
from mpsim.live.workers import serve_workers


# --- the command line ---------------------------------------------------------------------------------


def _endpoint(text: str) -> tuple[IPv4Address | IPv6Address, int]:
    try:
        return parse_endpoint(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def serve_parser(prog: str = "mpsim converter serve") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Run an RFC 8803 Transport Converter on Linux sockets (MPTCP and TCP clients, "
                               "the Convert message in the SYN payload). Needs net.ipv4.tcp_fastopen with the "
                               "server bit 0x2 in this network namespace.")
    parser.add_argument("--listen", action="append", type=_endpoint, required=True, metavar="ADDR:PORT",
                        help="address and port to listen on ([::]:PORT takes IPv4 clients too); repeatable")
    parser.add_argument("--allow", action="append", default=[], metavar="PREFIX",
                        help="client prefix to serve (RFC 8803 9.1); repeatable; none: everybody is refused")
    parser.add_argument("--require-cookie", action="store_true",
                        help="clients must send a Cookie TLV; those without get Error 3 with their cookie")
    parser.add_argument("--max-conns", type=int, default=1024, metavar="N",
                        help="converted connections at once; beyond: Error 64 (default 1024)")
    parser.add_argument("--relay", choices=[m.value for m in RelayMode], default=RelayMode.AUTO.value,
                        help="splice, copy, or auto: per direction, copy from MPTCP sockets and splice from "
                             "TCP ones (default auto)")
    parser.add_argument("--no-mptcp", action="store_true",
                        help="plain TCP listeners and downstream connections (kernels without MPTCP)")
    parser.add_argument("--message-timeout", type=_positive_float, default=10.0, metavar="S",
                        help="drop a client whose Convert message is not complete by then (default 10)")
    parser.add_argument("--connect-timeout", type=_positive_float, default=30.0, metavar="S",
                        help="give up on a server that has not answered by then: Error 65 (default 30)")
    parser.add_argument("--shutdown-grace", type=_positive_float, default=5.0, metavar="S",
                        help="on SIGTERM: how long running relays may go on before they are reset (default 5)")
    parser.add_argument("--max-pending", type=int, default=1024, metavar="N",
                        help="connections still sending their request or closing after an error; when full, the "
                             "oldest is reset (default 1024)")
    parser.add_argument("--max-pending-per-source", type=int, default=64, metavar="N",
                        help="pending connections per client address; beyond, that address's oldest is reset "
                             "(default 64)")
    parser.add_argument("--request-grace", type=_positive_float, default=1.0, metavar="S",
                        help="a request may take this long plus its bytes at --request-min-rate (default 1)")
    parser.add_argument("--request-min-rate", type=_positive_float, default=256.0, metavar="BYTES_PER_S",
                        help="minimum rate of a request's bytes after the grace; slower: reset (default 256)")
    parser.add_argument("--cookie-secret", metavar="FILE",
                        help="keep the cookie secret in FILE (created 0600 when missing; refused when group or "
                             "others can access it), so cookies survive restarts; SIGHUP re-reads it after "
                             "`mpsim converter rotate-secret FILE`")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="serving processes, each with SO_REUSEPORT listeners on the same ports and the same "
                             "cookie secret; counters are summed at exit and given per worker (default 1)")
    parser.add_argument("--quiet", action="store_true", help="no per-connection log lines")
    return parser


def serve_main(argv: list[str] | None = None, *, prog: str = "mpsim converter serve") -> int:
    """``mpsim converter serve``: exit 0 after a clean stop, 2 for settings the operator must
    fix (one line on stderr), 1 when listening or serving failed."""
    args = serve_parser(prog).parse_args(argv)
    try:
        config = ServeConfig(
            listen=tuple(args.listen), allowed_prefixes=tuple(args.allow), require_cookie=args.require_cookie,
            max_conns=args.max_conns, relay=RelayMode(args.relay), mptcp=not args.no_mptcp,
            message_timeout_s=args.message_timeout, connect_timeout_s=args.connect_timeout,
            shutdown_grace_s=args.shutdown_grace, log_connections=not args.quiet, max_pending=args.max_pending,
            max_pending_per_source=args.max_pending_per_source, request_grace_s=args.request_grace,
            request_min_rate_bytes_per_s=args.request_min_rate, cookie_secret_path=args.cookie_secret,
            reuse_port=args.workers > 1)
        if args.workers < 1:
            raise ConfigError("--workers must be at least 1")
        if args.workers > 1:
            return serve_workers(config, args.workers, prog=prog)
    except (ConfigError, KernelSettingError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as err:
        print(f"{prog}: error: {err.strerror or err}", file=sys.stderr)
        return EXIT_RUNTIME_ERROR
    status, _ = run_daemon(config, prog)
    return status


if __name__ == "__main__":
    sys.exit(serve_main(sys.argv[1:]))
