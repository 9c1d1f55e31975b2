"""The namespace testbed: a client with several paths to a converter, a server behind it, and
optionally a middlebox namespace on one path, as one context manager.

    with Testbed(paths=[PathSpec(rate_bps=20_000_000), PathSpec(loss_prob=0.01)]) as tb:
        server = tb.popen("server", ["iperf3", "-s", "-1"])
        done = tb.run("client", ["iperf3", "-c", tb.addresses.server], timeout_s=30)
        print(tb.facts())

Topology (addresses from 198.18.0.0/15; path i < 64):

    [client] path{i} 198.18.i.1 --- 198.18.i.2 path{i} [converter] server 198.19.0.1 --- 198.19.0.2 [server]
    with a middlebox on path i:
    [client] path{i} 198.18.i.1 --- 198.18.i.3 client [middlebox] converter 198.18.(64+i).3
                                               --- 198.18.(64+i).2 path{i} [converter]
    with delay, jitter or Gilbert-Elliott loss on path i and no netem in the kernel, a delay
    namespace splices the project's delay line (mpsim/testbed/delay.py) into the link:
    [client] path{i} 198.18.i.1 --- c{i} [delay] s{i} --- 198.18.i.2 path{i} [converter]
    (the delay namespace's ends have no address: the line forwards Ethernet frames unchanged)
    (interfaces are named after what is at their other end; every subnet is a /24)

With ``ip_version=6`` the same topology is built over IPv6 from the benchmarking range
2001:2::/48 (RFC 5180), one /64 per link with the IPv4 subnet's last number as its subnet ID
(198.18.i.0/24 is 2001:2:0:i::/64, 198.18.(64+i) 2001:2:0:(64+i)::/64, and the converter-server
link 198.19.0.0/24 is 2001:2:0:1900::/64), the same host numbers (198.18.0.1 is 2001:2::1).
Addresses are added with ``nodad`` and duplicate address detection is off (accept_dad=0), so they
are usable at once, and kept when a path goes down (keep_addr_on_down=1); the converter (and a middlebox) forward IPv6; loss and middlebox rules go
into ``table ip6 mpsim`` and ip6tables.

The client's main table routes via path 0; each path address has its own table (source routing),
and paths 1.. are MPTCP `subflow` endpoints, so one MPTCP connection uses every path. The
converter (and a middlebox) forward packets. Rate and loss apply at the receiving end of each
path, in both directions; middlebox rules in the middlebox namespace, else at the receiving end.

Every name carries a per-instance prefix `mps-<pid>-<n>`: parallel testbeds never collide, and a
dead process's leftovers are recognisable (:func:`cleanup_stale`). Interfaces are created inside
the namespaces, so deleting the namespaces removes every veth and IFB; processes are tracked by
PID and killed by process group. Clean-up runs on exit from the `with` block (exceptions and
Ctrl-C included) and at interpreter exit for testbeds still open.
"""

from __future__ import annotations

import atexit
import dataclasses
import ipaddress
import itertools
import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings

from mpsim.testbed import probe as probe_mod
from mpsim.testbed.probe import TestbedError, TestbedUnavailable, ns_argv, run_command
from mpsim.testbed.shaping import (DIRECTIONS, NFT_TABLE, PathSpec, iptables_command, iptables_middlebox_rules,
                                   loss_rules, netem_commands, nft_family, nft_middlebox_rules, nft_ruleset,
                                   parse_iptables_counters, parse_nft_counters, rate_commands)

PREFIX = "mps"
ROLES = ("client", "converter", "server", "middlebox")
DELAY_ROLE = "delay"      # the namespace of the delay lines, when a path needs one
DELAY_METHODS = ("auto", "netem", "delay-line")
DELAY_READY_TIMEOUT_S = 10.0
MAX_PATHS = 8
RPS_CPU_MASK = "1"  # one CPU: veth then never reorders the packets of a flow (docs/kernel-facts.md)
DEFAULT_TCP_BUFFER_MAX_BYTES = 16 * 2**20
KILL_GRACE_S = 1.0
_instance_counter = itertools.count()
_open_testbeds: set[Testbed] = set()
_open_lock = threading.Lock()


@dataclasses.dataclass(frozen=True)
class Addresses:
    """IPv4 (or IPv6) addresses of a testbed. client[i] and converter[i] are the two ends of path i (with a
    middlebox on path i, converter[i] is on the middlebox-converter link, and gateway[i] is the
    middlebox); converter_server_side faces the server."""

    client: tuple[str, ...]
    converter: tuple[str, ...]
    gateway: tuple[str, ...]
    converter_server_side: str
    server: str
    middlebox: tuple[str, ...] = ()


IP_VERSIONS = (4, 6)
SERVER_SUBNET = "198.19.0"


def host_address(subnet: str, host: int, ip_version: int = 4) -> str:
    """Host ``host`` of the link named by its IPv4 subnet ``subnet`` ("198.18.i"); with IPv6 the
    same host of that link's /64 in 2001:2::/48 (the module doc)."""
    if ip_version == 4:
        return f"{subnet}.{host}"
    return str(ipaddress.IPv6Address(f"2001:2:0:{_v6_subnet_id(subnet)}::{host:x}"))  # as the kernel writes it


def subnet_network(subnet: str, ip_version: int = 4) -> str:
    """The link's network: 198.18.i.0/24, or 2001:2:0:i::/64."""
    return f"{subnet}.0/24" if ip_version == 4 else f"2001:2:0:{_v6_subnet_id(subnet)}::/64"


def prefix_length(ip_version: int) -> int:
    return 24 if ip_version == 4 else 64


def _v6_subnet_id(subnet: str) -> str:
    _, second, third = subnet.split(".")
    return third if second == "18" else f"{second}{third}0"  # 198.18.N -> N, 198.19.0 -> 1900


def _path_addresses(index: int, via_middlebox: bool, ip_version: int = 4) -> dict[str, str]:
    base = f"198.18.{index}"

    def host(subnet: str, number: int) -> str:
        return host_address(subnet, number, ip_version)

    if not via_middlebox:
        return {"client": host(base, 1), "converter": host(base, 2), "gateway": host(base, 2)}
    return {"client": host(base, 1), "gateway": host(base, 3), "middlebox_client_side": host(base, 3),
            "middlebox_converter_side": host(f"198.18.{64 + index}", 3),
            "converter": host(f"198.18.{64 + index}", 2)}


CONVERTER_SERVER_SIDE = "198.19.0.1"
SERVER = "198.19.0.2"


class Testbed:
    """Network namespaces for client, converter, server (and a middlebox), as a context manager.

    paths: one PathSpec per client-converter path (1..8).
    middlebox_ns: put a middlebox namespace on path `middlebox_path`; that path's middlebox rules
      then run there instead of at the path's ends.
    cc: congestion control pinned in every namespace (recorded in facts()).
    tcp_buffer_max_bytes: maximum of net.ipv4.tcp_rmem and tcp_wmem in every namespace, raised so
      that the socket buffers never limit a measurement; None keeps the kernel's values.
    tfo: set net.ipv4.tcp_fastopen=0x207 everywhere (client and server, no cookie needed).
    sysctls: extra sysctls for every namespace, e.g. {"net.mptcp.blackhole_timeout": "0"}.
    ip_version: 4, or 6 for the same topology over IPv6 (the module doc).
    ready_timeout_s: bound on the bring-up reachability check.
    delay_method: how paths get delay, jitter and Gilbert-Elliott loss: "auto" (netem where the
      kernel has it and the path needs no Gilbert-Elliott loss, else the delay line), "netem", or
      "delay-line" (mpsim/testbed/delay.py, run in a namespace of its own).
    delay_check_pings: at bring-up, ping across every delayed path this many times and record the
      measured RTT against the configured one (facts()["delay_check"]); 0 skips the check.
    loss_held: the delay lines of paths with ``loss_seeds`` start with their loss held (no frame
      drawn or lost) until :meth:`arm_loss`, so the bring-up's own probes take no draws.
    """

    __test__ = False

    def __init__(self, paths: list[PathSpec] | tuple[PathSpec, ...] = (PathSpec(), PathSpec()), *,
                 middlebox_ns: bool = False, middlebox_path: int = 0, cc: str = "cubic",
                 tcp_buffer_max_bytes: int | None = DEFAULT_TCP_BUFFER_MAX_BYTES, tfo: bool = False,
                 sysctls: dict[str, str] | None = None, ready_timeout_s: float = 10.0,
                 delay_method: str = "auto", delay_check_pings: int = 10, ip_version: int = 4,
                 loss_held: bool = False):
        self.paths = tuple(paths)
        self.loss_held = loss_held
        if ip_version not in IP_VERSIONS:
            raise ValueError(f"ip_version={ip_version!r}: expected 4 or 6")
        self.ip_version = ip_version
        self._family = ["-6"] if ip_version == 6 else []   # ip's address family for routes and rules
        if delay_method not in DELAY_METHODS:
            raise ValueError(f"delay_method={delay_method!r}: expected one of {', '.join(DELAY_METHODS)}")
        if not 0 <= delay_check_pings <= 1000:
            raise ValueError(f"delay_check_pings={delay_check_pings}: expected 0..1000")
        self.delay_method = delay_method
        self.delay_check_pings = delay_check_pings
        if not 1 <= len(self.paths) <= MAX_PATHS:
            raise ValueError(f"{len(self.paths)} paths: expected 1..{MAX_PATHS}")
        if not all(isinstance(p, PathSpec) for p in self.paths):
            raise TypeError("paths must be PathSpec instances")
        if middlebox_ns and not 0 <= middlebox_path < len(self.paths):
            raise ValueError(f"middlebox_path={middlebox_path}: there are {len(self.paths)} paths")
        self.middlebox_path = middlebox_path if middlebox_ns else None
        self.cc = cc
        self.tcp_buffer_max_bytes = tcp_buffer_max_bytes
        self.tfo = tfo
        self.extra_sysctls = dict(sysctls or {})
        self.ready_timeout_s = ready_timeout_s
        self.prefix = f"{PREFIX}-{os.getpid()}-{next(_instance_counter)}"
        roles = ROLES if middlebox_ns else ROLES[:3]
        self.ns = {role: f"{self.prefix}-{role}" for role in roles}
        per_path = [_path_addresses(i, i == self.middlebox_path, ip_version) for i in range(len(self.paths))]
        self.addresses = Addresses(
            client=tuple(p["client"] for p in per_path), converter=tuple(p["converter"] for p in per_path),
            gateway=tuple(p["gateway"] for p in per_path),
            converter_server_side=host_address(SERVER_SUBNET, 1, ip_version),
            server=host_address(SERVER_SUBNET, 2, ip_version),
            middlebox=tuple(per_path[self.middlebox_path][k] for k in ("middlebox_client_side",
                                                                       "middlebox_converter_side"))
            if middlebox_ns else ())
        self._created: list[str] = []
        self._procs: list[subprocess.Popen] = []
        self._nft_counters: dict[str, list[str]] = {}   # namespace -> counter names
        self._iptables_ns: set[str] = set()
        self._counters_at_start: dict[str, dict[str, int]] = {}
        self._closed = False
        self._root_ns_changes: list[str] = []
        self.capabilities: probe_mod.Capabilities | None = None
        self.path_delay_methods: dict[int, str] = {}   # path index -> "netem" / "delay-line"
        self._delay_lines: dict[int, tuple[subprocess.Popen, str]] = {}   # path -> (process, stats file)
        self._scratch: str | None = None
        self.delay_check: dict[int, dict] = {}

    # --- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> Testbed:
        if self._closed or self._created:
            raise TestbedError(f"testbed {self.prefix} was already used; build a new Testbed")
        with _open_lock:
            _open_testbeds.add(self)
        try:
            self._build()
        except BaseException:
            self.close(raise_errors=False)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(raise_errors=exc_type is None)

    def close(self, raise_errors: bool = True) -> None:
        """Kill every process started here or living in our namespaces, then delete the namespaces
        (which destroys their veths and IFBs). Idempotent."""
        if self._closed:
            return
        self._closed = True
        problems = []
        for proc in self._procs:
            _kill_group(proc)
        for name in reversed(self._created):
            problems += _delete_namespace(name)
        if self._scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)
        with _open_lock:
            _open_testbeds.discard(self)
        if problems:
            message = f"testbed {self.prefix}: clean-up incomplete: " + "; ".join(problems)
            if raise_errors:
                raise TestbedError(message)
            warnings.warn(message, RuntimeWarning, stacklevel=2)

    def _build(self) -> None:
        caps = self.capabilities = probe_mod.probe()
        boxes = [p.middlebox for p in self.paths if p.middlebox]
        lacks = caps.missing(rate=any(p.rate_bps for p in self.paths), loss=any(p.nft_loss_prob for p in self.paths),
                             strip=any(b.uses_iptables for b in boxes), nft_middlebox=any(b.uses_nft for b in boxes))
        if not caps.mptcp:
            lacks.append("MPTCP (net.mptcp.enabled=1 and IPPROTO_MPTCP sockets)")
        if self.cc not in caps.congestion_controls:
            lacks.append(f"congestion control {self.cc!r} (available: {' '.join(caps.congestion_controls)})")
        self.path_delay_methods = {i: self._choose_delay_method(caps, spec)
                                   for i, spec in enumerate(self.paths) if spec.needs_delay}
        if "netem" in self.path_delay_methods.values() and not caps.qdiscs.get("netem"):
            lacks.append("netem (delay_method='netem'; this kernel has no netem qdisc: use 'auto' or 'delay-line')")
        if any(self.path_delay_methods.get(i) == "netem" for i, p in enumerate(self.paths) if p.delay_line_loss):
            lacks.append("seeded loss (PathSpec.loss_seeds) with delay_method='netem': only the delay line draws "
                         "from given seeds; use 'auto' or 'delay-line'")
        if "delay-line" in self.path_delay_methods.values():
            lacks += caps.missing(delay_line=True)
            self.ns[DELAY_ROLE] = f"{self.prefix}-{DELAY_ROLE}"
        if lacks:
            raise TestbedUnavailable("cannot build the testbed here; missing:\n  - " + "\n  - ".join(lacks))
        cleanup_stale(self.prefix, only_dead_owners=False)  # a dead process with our pid left these
        self._root_ns_changes = _allow_congestion_control(self.cc)
        for name in self.ns.values():
            run_command(["ip", "netns", "add", name])
            self._created.append(name)
            self._set_sysctls(name)
            run_command(["ip", "-n", name, "link", "set", "lo", "up"])
        self._build_links()
        self._build_routes()
        self._build_emulation()
        self._start_delay_lines()
        self.wait_until_reachable(self.ready_timeout_s)
        if self.path_delay_methods and self.delay_check_pings:
            self.delay_check = self.measure_delay(self.delay_check_pings)
        self._counters_at_start = {role: self.counters(role) for role in self.ns}

    def _choose_delay_method(self, caps: probe_mod.Capabilities, spec: PathSpec) -> str:
        if self.delay_method != "auto":
            return self.delay_method
        netem_can = caps.qdiscs.get("netem") and not spec.gilbert_elliott and not spec.delay_line_loss
        return "netem" if netem_can else "delay-line"

    def _set_sysctls(self, name: str) -> None:
        # Before any link exists, so new interfaces inherit rp_filter=0 from `default`.
        values = {"net.ipv4.conf.all.rp_filter": "0", "net.ipv4.conf.default.rp_filter": "0",
                  "net.ipv4.tcp_congestion_control": self.cc,
                  "net.ipv4.ip_forward": "1" if name in (self.ns["converter"], self.ns.get("middlebox")) else "0"}
        if self.tfo:
            values["net.ipv4.tcp_fastopen"] = "0x207"  # client + server, SYN data without cookies
        if self.tcp_buffer_max_bytes:
            current = probe_mod.read_sysctls(name, ("net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"))
            for key, value in current.items():
                low, default, _ = value.split()
                values[key] = f"{low} {default} {self.tcp_buffer_max_bytes}"
        if self.ip_version == 6:
            # Addresses usable at once (no duplicate address detection: every address here is
            # unique by construction), and the routers forward IPv6.
            # keep_addr_on_down: a path brought down and up again (set_path_up) keeps its address,
            # as IPv4 does (Linux removes IPv6 addresses of a downed device by default).
            values |= {"net.ipv6.conf.all.accept_dad": "0", "net.ipv6.conf.default.accept_dad": "0",
                       "net.ipv6.conf.all.keep_addr_on_down": "1", "net.ipv6.conf.default.keep_addr_on_down": "1",
                       "net.ipv6.conf.all.forwarding":
                           "1" if name in (self.ns["converter"], self.ns.get("middlebox")) else "0"}
        if name == self.ns.get(DELAY_ROLE):
            # The delay namespace is a wire: it must not speak (IPv6 router solicitations, DAD) itself.
            values |= {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"}
        values.update(self.extra_sysctls)
        run_command(["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in values.items())], ns=name)

    def _veth(self, ns_a: str, dev_a: str, ns_b: str, dev_b: str) -> None:
        # Created inside the namespaces: no name ever exists in the root namespace.
        run_command(["ip", "-n", ns_a, "link", "add", dev_a, "type", "veth", "peer", "name", dev_b, "netns", ns_b])

    def _links(self) -> list[tuple[str, str, str, str, str]]:
        """(role a, dev a, role b, dev b, subnet prefix) of every veth link."""
        links = []
        for i in range(len(self.paths)):
            if i == self.middlebox_path:
                first = [("client", f"path{i}", "middlebox", "client", f"198.18.{i}"),
                         ("middlebox", "converter", "converter", f"path{i}", f"198.18.{64 + i}")]
            else:
                first = [("client", f"path{i}", "converter", f"path{i}", f"198.18.{i}")]
            if self.path_delay_methods.get(i) == "delay-line":
                # The client's link of the path is cut in two at the delay namespace.
                role_a, dev_a, role_b, dev_b, subnet = first[0]
                first[0:1] = [(role_a, dev_a, DELAY_ROLE, f"c{i}", subnet), (DELAY_ROLE, f"s{i}", role_b, dev_b, subnet)]
            links += first
        links.append(("converter", "server", "server", "converter", "198.19.0"))
        return links

    def _build_links(self) -> None:
        host_octet = {"client": 1, "converter": 2, "middlebox": 3, "server": 2}
        devices: dict[str, list[str]] = {name: [] for name in self.ns.values()}
        checksum_off: set[tuple[str, str]] = set()
        for role_a, dev_a, role_b, dev_b, subnet in self._links():
            ns_a, ns_b = self.ns[role_a], self.ns[role_b]
            self._veth(ns_a, dev_a, ns_b, dev_b)
            for role, ns, dev in ((role_a, ns_a, dev_a), (role_b, ns_b, dev_b)):
                devices[ns].append(dev)
                if DELAY_ROLE in (role_a, role_b):
                    # A frame read from an AF_PACKET socket carries whatever checksum the sender left
                    # (none, with checksum offload); the far end then verifies it: compute in software.
                    checksum_off.add((ns, dev))
                if role == DELAY_ROLE:
                    continue   # the delay line's ports have no address
                octet = 1 if (subnet == SERVER_SUBNET and role == "converter") else host_octet[role]
                address = f"{host_address(subnet, octet, self.ip_version)}/{prefix_length(self.ip_version)}"
                run_command(["ip", "-n", ns, "addr", "add", address, "dev", dev,
                             *(["nodad"] if self.ip_version == 6 else [])])
        for ns, devs in devices.items():
            for dev in devs:
                # One skb is one packet for tbf and the loss rule (docs/kernel-facts.md: offloads).
                extra = ["tx", "off"] if (ns, dev) in checksum_off else []
                run_command(["ethtool", "-K", dev, "tso", "off", "gso", "off", *extra], ns=ns)
                run_command(["ip", "-n", ns, "link", "set", dev, "up"])
            # sysfs shows the namespace's own devices only under `ip netns exec` (it remounts /sys).
            run_command(["tee", *(f"/sys/class/net/{dev}/queues/rx-0/rps_cpus" for dev in devs)],
                        ns=ns, input_text=RPS_CPU_MASK + "\n")
        self._devices = devices

    def _path_routes(self, i: int) -> list[tuple[str, list[str]]]:
        """(namespace, ip argv) of path i's static routes. `replace` makes them re-runnable: the
        kernel deletes a device's static routes when the device goes down (set_path_up)."""
        a, client, table, family = self.addresses, self.ns["client"], str(100 + i), self._family
        network = subnet_network(f"198.18.{i}", self.ip_version)
        routes = [(client, [*family, "route", "replace", network, "dev", f"path{i}", "src", a.client[i],
                            "table", table]),
                  (client, [*family, "route", "replace", "default", "via", a.gateway[i], "dev", f"path{i}",
                            "table", table])]
        if i == 0:
            routes.append((client, [*family, "route", "replace", "default", "via", a.gateway[0], "dev", "path0"]))
        if i == self.middlebox_path:
            routes += [(self.ns["converter"], [*family, "route", "replace", network, "via", a.middlebox[1],
                                               "dev", f"path{i}"]),
                       (self.ns["middlebox"], [*family, "route", "replace", "default", "via", a.converter[i],
                                               "dev", "converter"])]
        return routes

    def _build_routes(self) -> None:
        client, a, n_paths = self.ns["client"], self.addresses, len(self.paths)
        for i in range(n_paths):
            for ns, argv in self._path_routes(i):
                run_command(["ip", "-n", ns, *argv])
            # Source routing: each path address leaves through its own path.
            run_command(["ip", "-n", client, *self._family, "rule", "add", "from", a.client[i], "table",
                         str(100 + i), "priority", str(1000 + i)])
            if i > 0:
                run_command(["ip", "-n", client, "mptcp", "endpoint", "add", a.client[i], "dev", f"path{i}",
                             "subflow"])
        run_command(["ip", "-n", self.ns["server"], *self._family, "route", "add", "default", "via",
                     a.converter_server_side])
        limit = str(max(2, n_paths - 1))
        for name in self.ns.values():
            run_command(["ip", "-n", name, "mptcp", "limits", "set", "subflow", limit, "add_addr_accepted", limit])

    def _build_emulation(self) -> None:
        nft: dict[str, tuple[list[str], list[str], list[str]]] = {}   # ns -> counters, loss, middlebox

        def rules_for(ns):
            return nft.setdefault(ns, ([], [], []))

        for i, spec in enumerate(self.paths):
            if self.path_delay_methods.get(i) == "netem":
                # Egress of both ends of the path's client link (rate stays at the ingress).
                far_role, far_dev = ("middlebox", "client") if i == self.middlebox_path else ("converter", f"path{i}")
                for ns, dev in ((self.ns["client"], f"path{i}"), (self.ns[far_role], far_dev)):
                    for argv in netem_commands(dev, spec):
                        run_command(argv, ns=ns)
            # (direction, namespace receiving that direction at the path's end, its device)
            ends = (("up", self.ns["converter"], f"path{i}"), ("down", self.ns["client"], f"path{i}"))
            for direction, ns, dev in ends:
                if spec.rate_bps:
                    for argv in rate_commands(dev, spec):
                        run_command(argv, ns=ns)
                if spec.nft_loss_prob:
                    names, lines = loss_rules(dev, i, direction, spec.nft_loss_prob)
                    rules_for(ns)[0].extend(names)
                    rules_for(ns)[1].extend(lines)
            if spec.middlebox:
                if i == self.middlebox_path:
                    ends = (("up", self.ns["middlebox"], "client"), ("down", self.ns["middlebox"], "converter"))
                for direction, ns, dev in ends:
                    names, lines = nft_middlebox_rules(dev, i, direction, spec.middlebox, self.ip_version)
                    rules_for(ns)[0].extend(names)
                    rules_for(ns)[2].extend(lines)
                    for argv in iptables_middlebox_rules(dev, i, direction, spec.middlebox, self.ip_version):
                        run_command(argv, ns=ns)
                        self._iptables_ns.add(ns)
        for ns, (counters, loss_lines, box_lines) in nft.items():
            if loss_lines or box_lines:
                run_command(["nft", "-f", "-"], ns=ns,
                            input_text=nft_ruleset(counters, loss_lines, box_lines, self.ip_version))
                self._nft_counters[ns] = counters

    def _start_delay_lines(self) -> None:
        """One delay-line process per path that needs one, in the delay namespace; each in its own
        session (killed by process group at close), ready when it has printed its first line."""
        lines = [i for i, method in self.path_delay_methods.items() if method == "delay-line"]
        if not lines:
            return
        from mpsim.testbed import delay as delay_mod   # here: `python -m mpsim.testbed.delay` imports this package

        self._scratch = tempfile.mkdtemp(prefix=f"{self.prefix}-")
        for i in lines:
            stats_path = os.path.join(self._scratch, f"delay-path{i}.json")
            argv = self.delay_line_argv(i, stats_path)
            with open(os.path.join(self._scratch, f"delay-path{i}.log"), "wb") as log:
                proc = self.popen(DELAY_ROLE, argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)
            self._delay_lines[i] = (proc, stats_path)
        for i, (proc, _stats) in self._delay_lines.items():
            line = _read_line(proc, DELAY_READY_TIMEOUT_S)
            if line != "ready":
                log = os.path.join(self._scratch, f"delay-path{i}.log")
                with open(log, errors="replace") as f:
                    raise TestbedError(f"delay line of path {i} did not start (exit {proc.poll()}): {f.read()[-800:]}")

    def delay_line_argv(self, i: int, stats_path: str | None = None) -> list[str]:
        """The command line of path i's delay line: its client end c{i} is port a, so a to b is the
        path's up direction; with ``loss_seeds`` the path's loss is drawn there, TCP frames only
        (held until :meth:`arm_loss` with ``loss_held``)."""
        from mpsim.testbed import delay as delay_mod

        spec = self.paths[i]
        return delay_mod.argv(f"c{i}", f"s{i}", spec.delay_s, jitter_s=spec.jitter_s,
                              loss=spec.delay_line_loss_argument(), seed=1 + i, stats_path=stats_path,
                              loss_seeds=spec.loss_seeds if spec.delay_line_loss else None,
                              loss_tcp_only=spec.delay_line_loss, loss_held=self.loss_held and spec.delay_line_loss)

    def arm_loss(self, timeout_s: float = 3.0) -> None:
        """Start the held loss of every delay line with ``loss_seeds`` (SIGUSR2); returns once each
        has written statistics saying so (a clear error after ``timeout_s``)."""
        from mpsim.testbed import delay as delay_mod

        held = {i: entry for i, entry in self._delay_lines.items() if self.paths[i].delay_line_loss}
        for proc, _path in held.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGUSR2)
        deadline = time.monotonic() + timeout_s
        for i, (proc, path) in held.items():
            for _ in range(10_000):
                stats = delay_mod.read_stats(path)
                if stats and stats.get("loss_armed"):
                    break
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise TestbedError(f"the delay line of path {i} did not arm its loss within {timeout_s} s "
                                       f"(exit {proc.poll()})")
                time.sleep(0.002)

    def delay_line_stats(self, timeout_s: float = 3.0) -> dict[int, dict]:
        """{path: statistics} of every running delay line (frames forwarded, lost, lateness against
        the due time, CPU seconds), freshly written on request (SIGUSR1)."""
        from mpsim.testbed import delay as delay_mod

        asked = {}
        for i, (proc, path) in self._delay_lines.items():
            before = delay_mod.read_stats(path)
            asked[i] = (before or {}).get("dumps", 0)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGUSR1)
        out, deadline = {}, time.monotonic() + timeout_s
        for i, (proc, path) in self._delay_lines.items():
            for _ in range(1000):
                stats = delay_mod.read_stats(path)
                if (stats and stats.get("dumps", 0) > asked[i]) or time.monotonic() > deadline or proc.poll() is not None:
                    break
                time.sleep(0.01)
            out[i] = stats
        return out

    def measure_delay(self, pings: int = 10, interval_s: float = 0.01) -> dict[int, dict]:
        """The self-check of every delayed path: ping the path's far end from the client's path address
        and compare the RTT with the configured 2 x delay_s (and jitter); with the delay line, its
        own lateness statistics too. Pings of all paths run at once."""
        if not self.path_delay_methods:
            return {}
        if not shutil.which("ping"):
            return {i: {"error": "ping is not installed (apt-get install iputils-ping)"} for i in self.path_delay_methods}
        procs = {}
        for i in self.path_delay_methods:
            argv = ["ping", "-n", "-c", str(pings + 1), "-i", str(interval_s), "-W", "2",
                    "-I", self.addresses.client[i], self.addresses.gateway[i]]
            procs[i] = self.popen("client", argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out = {}
        limit_s = 10 + (pings + 1) * interval_s + 2 * max(self.paths[i].delay_s for i in procs)
        for i, proc in procs.items():
            try:
                text, err = proc.communicate(timeout=limit_s)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                text, err = proc.communicate()
            _kill_group(proc)
            self._procs.remove(proc)
            rtts = _ping_rtts_s(text)[1:]   # the first waits for ARP across the line
            spec = self.paths[i]
            expected = 2 * spec.delay_s
            out[i] = {"method": self.path_delay_methods[i], "configured_rtt_s": expected, "jitter_s": spec.jitter_s,
                      "pings": len(rtts), "rtt_min_s": min(rtts) if rtts else None,
                      "rtt_median_s": statistics.median(rtts) if rtts else None,
                      "rtt_max_s": max(rtts) if rtts else None,
                      "median_error_s": statistics.median(rtts) - expected if rtts else None,
                      "error": None if rtts else (err.strip() or "no ping replies")}
        if self._delay_lines:
            for i, stats in self.delay_line_stats().items():
                if stats:
                    out[i]["delay_line"] = {name: d["lateness"] for name, d in stats["directions"].items()} | {
                        "cpu_s": stats["cpu_s"], "wake_margin_s": stats.get("wake_margin_s")}
        return out

    # --- checks ---------------------------------------------------------------------------------

    def reachability_targets(self) -> dict[str, list[tuple[str, str]]]:
        """(source address, destination address) pairs each role must reach: its neighbours on
        every link, the server from every client path (routed, source-routed), and back."""
        a = self.addresses
        targets: dict[str, list[tuple[str, str]]] = {role: [] for role in self.ns}
        for i in range(len(self.paths)):
            targets["client"] += [(a.client[i], a.gateway[i]), (a.client[i], a.server)]
            targets["server"].append((a.server, a.client[i]))
            if i == self.middlebox_path:
                targets["middlebox"] += [(a.middlebox[0], a.client[i]), (a.middlebox[1], a.converter[i])]
            else:
                targets["converter"].append((a.converter[i], a.client[i]))
        targets["converter"].append((a.converter_server_side, a.server))
        targets["server"].append((a.server, a.converter_server_side))
        return targets

    def check_reachability(self, timeout_s: float = 1.0) -> dict[str, list[tuple[str, str]]]:
        """Try a TCP connect for every reachability target (a closed port answers RST, which proves
        the path works both ways); returns the pairs that failed, per role (empty when all work)."""
        failed = {}
        for i, source in enumerate(self.addresses.client):
            # Reachable is not enough: path i's address must also leave through path i.
            route = run_command(["ip", "-n", self.ns["client"], "route", "get", self.addresses.server,
                                 "from", source], check=False).stdout
            if f" dev path{i} " not in route:
                failed.setdefault("client", []).append((source, f"route via path{i}: {route.strip()}"))
        for role, pairs in self.reachability_targets().items():
            if pairs:
                done = self.run(role, [sys.executable, "-c", _CONNECT_PROBE, json.dumps(pairs), str(timeout_s)],
                                timeout_s=timeout_s + 10)
                if done.returncode != 0:
                    raise TestbedError(f"reachability probe failed in {role}: {done.stderr.strip()}")
                bad = [tuple(p) for p in json.loads(done.stdout)]
                if bad:
                    failed.setdefault(role, []).extend(bad)
        return failed

    def wait_until_reachable(self, timeout_s: float) -> None:
        """Repeat check_reachability until everything answers, at most `timeout_s` (bounded)."""
        deadline = time.monotonic() + timeout_s
        for _attempt in range(20):
            failed = self.check_reachability()
            if not failed or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if failed:
            raise TestbedError(f"testbed {self.prefix}: not reachable after {timeout_s} s: {failed}")

    def set_path_up(self, index: int, up: bool) -> None:
        """Bring both ends of path `index` down (a path failure) or up again."""
        state = "up" if up else "down"
        run_command(["ip", "-n", self.ns["client"], "link", "set", f"path{index}", state])
        run_command(["ip", "-n", self.ns["converter"], "link", "set", f"path{index}", state])
        if up:
            for ns, argv in self._path_routes(index):
                run_command(["ip", "-n", ns, *argv])

    # --- processes ------------------------------------------------------------------------------

    def _ns_of(self, role: str) -> str:
        """The namespace of a role ("client", "converter", "server", "middlebox") or a full name."""
        if role in self.ns.values():
            return role
        try:
            return self.ns[role]
        except KeyError:
            raise TestbedError(f"no namespace {role!r} in this testbed (have {', '.join(self.ns)})") from None

    def popen(self, role: str, argv: list[str], **kwargs) -> subprocess.Popen:
        """Start argv in namespace `role` in its own session; it is killed (its whole process
        group) when the testbed closes. kwargs go to subprocess.Popen."""
        if self._closed:
            raise TestbedError("testbed is closed")
        proc = subprocess.Popen(ns_argv(self._ns_of(role), argv), start_new_session=True, **kwargs)
        self._procs.append(proc)
        return proc

    def run(self, role: str, argv: list[str], *, timeout_s: float, input_text: str | None = None,
            check: bool = False) -> subprocess.CompletedProcess:
        """Run argv in namespace `role` to completion, capturing text output. On timeout the whole
        process group is killed and subprocess.TimeoutExpired raised (as subprocess.run does)."""
        full = ns_argv(self._ns_of(role), argv)
        proc = self.popen(role, argv, stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(input_text, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, err = proc.communicate()
            raise subprocess.TimeoutExpired(full, timeout_s, out, err) from None
        finally:
            _kill_group(proc)   # children it left behind in its group
            self._procs.remove(proc)
        done = subprocess.CompletedProcess(full, proc.returncode, out, err)
        if check:
            done.check_returncode()
        return done

    # --- counters and facts ---------------------------------------------------------------------

    def counters(self, role: str) -> dict[str, int]:
        """Namespace counters: "TcpExt.*", "IpExt.*", "MPTcpExt.*" from /proc/net/netstat, plus the
        loss and middlebox rule counters installed there ("nft.<name>.packets" / ".bytes",
        "iptables.<name>.packets" / ".bytes")."""
        ns = self._ns_of(role)
        values = probe_mod.read_netstat(ns)
        if ns in self._nft_counters:
            done = run_command(["nft", "-j", "list", "counters", "table", nft_family(self.ip_version), NFT_TABLE],
                               ns=ns)
            values.update({f"nft.{k}": v for k, v in parse_nft_counters(done.stdout).items()})
        if ns in self._iptables_ns:
            done = run_command([f"{iptables_command(self.ip_version)}-save", "-c", "-t", "mangle"], ns=ns)
            values.update({f"iptables.{k}": v for k, v in parse_iptables_counters(done.stdout).items()})
        return values

    def loss_counters(self) -> dict[int, dict[str, dict[str, int]]]:
        """{path: {"up"/"down": {"seen_packets", "dropped_packets"}}} for every path with loss."""
        out: dict[int, dict[str, dict[str, int]]] = {}
        cache = {ns: self.counters(role) for role, ns in self.ns.items() if ns in self._nft_counters}
        if any(spec.delay_line_loss for spec in self.paths):
            lines = self.delay_line_stats()
            for i, spec in enumerate(self.paths):
                directions = (lines.get(i) or {}).get("directions") if spec.delay_line_loss else None
                if directions:   # the delay line's own counts: frames drawn for and lost, per direction
                    out[i] = {direction: {"seen_packets": directions[name]["drawn"],
                                          "dropped_packets": directions[name]["lost"]}
                              for direction, name in zip(DIRECTIONS, ("a_to_b", "b_to_a"))}
        for i, spec in enumerate(self.paths):
            if not spec.nft_loss_prob:
                continue
            out[i] = {}
            for direction, role in zip(DIRECTIONS, ("converter", "client")):
                values = cache[self.ns[role]]
                out[i][direction] = {f"{what}_packets": values[f"nft.loss_path{i}_{direction}_{what}.packets"]
                                     for what in ("seen", "dropped")}
        return out

    def facts(self) -> dict:
        """The record to store with a run: kernel, capabilities, topology, pinned settings, the
        sysctls that matter per namespace, counters at bring-up and now, per-path loss counters."""
        caps = self.capabilities or probe_mod.probe()
        return {
            "kernel": probe_mod.kernel_facts(),
            "capabilities": caps.as_dict(),
            "cannot_emulate": caps.cannot_emulate(),
            "prefix": self.prefix,
            "namespaces": dict(self.ns),
            "addresses": dataclasses.asdict(self.addresses),
            "paths": [dataclasses.asdict(p) | {"tbf_burst_limit_bytes": p.tbf_sizes() if p.rate_bps else None}
                      for p in self.paths],
            "middlebox_path": self.middlebox_path,
            "delay_methods": {str(i): method for i, method in self.path_delay_methods.items()},
            "delay_check": {str(i): check for i, check in self.delay_check.items()},
            "delay_lines": {str(i): stats for i, stats in self.delay_line_stats().items()} if self._delay_lines else {},
            "congestion_control": self.cc,
            "ip_version": self.ip_version,
            "root_ns_changes": self._root_ns_changes,
            "tcp_buffer_max_bytes": self.tcp_buffer_max_bytes,
            "tfo": self.tfo,
            "rps_cpus": RPS_CPU_MASK,
            "offloads_off": ["tso", "gso"],
            "sysctls": {role: probe_mod.read_sysctls(ns) for role, ns in self.ns.items()},
            "counters_at_start": self._counters_at_start,
            "counters_now": {role: self.counters(role) for role in self.ns},
            "loss_counters": self.loss_counters(),
        }


def _allow_congestion_control(cc: str) -> list[str]:
    """Add `cc` to the global net.ipv4.tcp_allowed_congestion_control if it is missing.

    A namespace other than the root one may only default to an *allowed* algorithm (the kernel
    answers EPERM otherwise), and the allowed list is global. Widening it changes no existing
    socket and not the root namespace's default; it is never narrowed again, because parallel
    testbeds may rely on it. Returns the change made, for facts()."""
    key = "net/ipv4/tcp_allowed_congestion_control"
    allowed = (probe_mod.read_sysctl_file(key) or "").split()
    if cc in allowed:
        return []
    run_command(["sysctl", "-q", "-w", f"net.ipv4.tcp_allowed_congestion_control={' '.join([*allowed, cc])}"])
    return [f"net.ipv4.tcp_allowed_congestion_control: {' '.join(allowed)!r} -> {' '.join([*allowed, cc])!r}"]


def counter_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """after - before for every counter, keeping only the ones that changed."""
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


# A connect to a closed port on each target: RST (refused) or accept both prove reachability.
_CONNECT_PROBE = r"""
import concurrent.futures, json, socket, sys
pairs, timeout_s = json.loads(sys.argv[1]), float(sys.argv[2])
def reaches(pair):
    src, dst = pair
    with socket.socket(socket.AF_INET6 if ":" in src else socket.AF_INET) as s:
        s.settimeout(timeout_s)
        try:
            s.bind((src, 0))   # IPv6 refuses an address whose device is down (EADDRNOTAVAIL): unreachable
        except OSError:
            return False
        try:
            s.connect((dst, 9))
        except ConnectionRefusedError:
            return True
        except OSError:
            return False
        return True
with concurrent.futures.ThreadPoolExecutor(len(pairs)) as pool:
    print(json.dumps([p for p, ok in zip(pairs, pool.map(reaches, pairs)) if not ok]))
"""


def _read_line(proc: subprocess.Popen, timeout_s: float) -> str | None:
    """The first line of proc's stdout within timeout_s (None at the deadline or at EOF)."""
    buffer, deadline, fd = b"", time.monotonic() + timeout_s, proc.stdout.fileno()
    for _ in range(10_000):
        if b"\n" in buffer:
            return buffer.split(b"\n", 1)[0].decode(errors="replace").strip()
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 4096)
        if not chunk:
            return None
        buffer += chunk
    return None


def _ping_rtts_s(text: str) -> list[float]:
    """The round-trip times of ping's reply lines ("... time=20.1 ms"), in seconds."""
    out = []
    for line in text.splitlines():
        if " time=" in line:
            value = line.split(" time=", 1)[1].split()[0]
            try:
                out.append(float(value) / 1e3)
            except ValueError:
                pass
    return out


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group, SIGKILL it after a grace period, and reap the leader."""
    for sig, wait_s in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, KILL_GRACE_S)):
        try:
            os.killpg(proc.pid, sig)   # start_new_session=True: the group id is the leader's pid
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait_s)
            if sig == signal.SIGTERM:
                # The leader is gone; its group may still hold children, which SIGKILL ends at once.
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            return
        except subprocess.TimeoutExpired:
            continue


def _namespace_pids(name: str) -> list[int]:
    done = run_command(["ip", "netns", "pids", name], check=False)
    return [int(p) for p in done.stdout.split() if p.isdigit()]


def _delete_namespace(name: str) -> list[str]:
    """Kill the processes inside namespace `name` (by PID), then delete it; returns problems."""
    problems = []
    for _attempt in range(3):
        pids = [p for p in _namespace_pids(name) if p != os.getpid()]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    else:
        problems.append(f"{name}: processes still running: {pids}")
    done = run_command(["ip", "netns", "del", name], check=False)
    if done.returncode != 0 and os.path.exists(f"/run/netns/{name}"):
        problems.append(f"{name}: {done.stderr.strip()}")
    return problems


def list_namespaces(prefix: str = PREFIX) -> list[str]:
    """Namespace names equal to `prefix` or starting with `prefix-`."""
    done = run_command(["ip", "netns", "list"], check=False)
    names = [line.split()[0] for line in done.stdout.splitlines() if line.strip()]
    return [n for n in names if n == prefix or n.startswith(prefix + "-")]


def _owner_alive(name: str) -> bool:
    """True when the mps-<pid>-... namespace's owner process still runs (unknown pid: assume so)."""
    parts = name.split("-")
    if len(parts) < 2 or parts[0] != PREFIX or not parts[1].isdigit():
        return True
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale(prefix: str = PREFIX, *, only_dead_owners: bool = True) -> list[str]:
    """Delete namespaces named `prefix` or `prefix-...` and kill their processes; returns the names
    removed. By default only those whose owner PID (mps-<pid>-...) is no longer running, so
    testbeds of live processes (parallel test runs) are left alone."""
    removed = []
    for name in list_namespaces(prefix):
        if only_dead_owners and _owner_alive(name):
            continue
        problems = _delete_namespace(name)
        if problems:
            raise TestbedError("; ".join(problems))
        removed.append(name)
    return removed


@atexit.register
def _close_open_testbeds() -> None:
    with _open_lock:
        pending = list(_open_testbeds)
    for testbed in pending:
        testbed.close(raise_errors=False)
