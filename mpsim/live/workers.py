"""``mpsim converter serve --workers N``: N converter processes on the same ports (SO_REUSEPORT).

The supervisor (this module) validates the settings and resolves port 0 once, gives every worker
the same cookie secret (the file's, or one random secret for all: a cookie issued by one worker is
valid at the others), forks the workers, forwards SIGTERM/SIGINT/SIGHUP to them and, when they
have all stopped, prints the counters summed over the workers (``event=counters workers=N``); each
worker prints its own first (``event=worker_counters worker=I``). The kernel spreads new
connections over the listeners by a hash of the 4-tuple; a worker's connections stay with it, so
--max-conns and the pending limits are per worker. Exit status: the highest of the workers'.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import signal
import socket
import sys
import time
from collections import Counter

from mpsim.live.converter import (
    EXIT_OK,
    EXIT_RUNTIME_ERROR,
    EXIT_USER_ERROR,
    ConfigError,
    ConverterDaemon,
    ServeConfig,
    _kv,
    run_daemon,
)
from mpsim.live.sockets import converter_kernel_problems, family_of, stream_socket


def _resolve_ports(config: ServeConfig) -> tuple[ServeConfig, list[socket.socket]]:
    """Port 0 becomes one port for every worker: a bound (not listening) SO_REUSEPORT socket holds
    it while they start; it never takes connections (only listening sockets do)."""
    holders, listen = [], []
    for address, port in config.listen:
        if port == 0:
            holder = stream_socket(family_of(address), mptcp=config.mptcp)
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            holder.bind((str(address), 0))
            port = holder.getsockname()[1]
            holders.append(holder)
        listen.append((address, port))
    return dataclasses.replace(config, listen=tuple(listen)), holders


def _worker(config: ServeConfig, index: int, report_fd: int) -> int:
    status, daemon = run_daemon(dataclasses.replace(config, worker=index), f"worker {index}")
    if daemon is not None:
        os.write(report_fd, json.dumps(daemon.counters()).encode())
    return status


def serve_workers(config: ServeConfig, workers: int, *, prog: str) -> int:
    """Run ``workers`` converter processes until SIGTERM/SIGINT; the highest exit status."""
    problems = converter_kernel_problems(mptcp=config.mptcp)
    if problems:
        print(f"{prog}: error: {'; '.join(problems)}", file=sys.stderr)
        return EXIT_USER_ERROR
    try:
        ConverterDaemon(config)  # every setting checked once, the cookie file created if missing
        if config.cookie_secret_path is None:
            config = dataclasses.replace(config, cookie_secrets=(secrets.token_bytes(32),))
        config, holders = _resolve_ports(config)
    except ConfigError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as err:
        print(f"{prog}: error: cannot listen: {err.strerror or err}", file=sys.stderr)
        return EXIT_RUNTIME_ERROR
    children: dict[int, tuple[int, int]] = {}  # pid -> (worker index, read end of its report pipe)
    for index in range(workers):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker: serve, report, and leave without running the parent's cleanup
            status = EXIT_RUNTIME_ERROR
            try:
                os.close(read_fd)
                for holder in holders:
                    holder.close()
                status = _worker(config, index, write_fd)
            finally:
                os._exit(status)
        os.close(write_fd)
        children[pid] = (index, read_fd)

    def forward(signum: int, frame: object) -> None:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM if signum == signal.SIGINT else signum)
            except ProcessLookupError:
                pass

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    statuses: dict[int, int] = {}
    reports: dict[int, dict[str, int]] = {}
    while len(statuses) < workers:
        try:
            pid, wait_status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid not in children:
            continue
        index, read_fd = children[pid]
        statuses[index] = os.waitstatus_to_exitcode(wait_status)
        with os.fdopen(read_fd, "rb") as report:
            text = report.read()
        if text:
            reports[index] = json.loads(text)
        if statuses[index] != EXIT_OK and len(statuses) < workers:
            forward(signal.SIGTERM, None)  # one worker failed: stop the others rather than serve lopsided
    for holder in holders:
        holder.close()
    total: Counter[str] = Counter()
    for counters in reports.values():
        total.update(counters)
    line = f"ts={time.time():.3f} event=counters workers={workers}" + "".join(
        f" {k}={_kv(v)}" for k, v in sorted(total.items()))
    print(line, file=sys.stderr, flush=True)
    return max(statuses.values(), default=EXIT_RUNTIME_ERROR)
