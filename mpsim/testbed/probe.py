"""What this kernel can emulate, and the record of kernel facts that goes with every run.

The testbed leans on kernel features that differ between machines (qdiscs, tc actions, nftables
expressions, xt targets, MPTCP, TFO), so it probes them once per process in a throw-away network
namespace instead of trusting a list: :func:`probe` returns a :class:`Capabilities`, whose
:meth:`~Capabilities.cannot_emulate` says plainly what is out of reach here.

This module also holds the one place where configuration commands run (:func:`run_command`, with
errors that name the command, the namespace and the kernel's message) and the readers of per
namespace facts (:func:`read_sysctls`, :func:`read_netstat`), because the probe needs them first.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import socket
import subprocess

from mpsim.errors import MpsimError
from mpsim.provenance import machine_facts

IPPROTO_MPTCP = 262
TCP_FASTOPEN_CONNECT = 30  # not exported by Python's socket module


class TestbedError(MpsimError):
    """A testbed command failed, or the testbed was misused."""

    __test__ = False  # not a pytest test class despite the name


class TestbedUnavailable(TestbedError):
    """This machine cannot run the requested testbed (not root, a missing tool or kernel feature)."""


def ns_argv(ns: str | None, argv: list[str]) -> list[str]:
    """argv run inside namespace `ns` (or in the current one when `ns` is None)."""
    return ["ip", "netns", "exec", ns, *argv] if ns else list(argv)


def run_command(argv: list[str], *, ns: str | None = None, input_text: str | None = None,
                timeout_s: float = 15.0, check: bool = True) -> subprocess.CompletedProcess:
    """Run one short configuration command (never a workload: see Testbed.run for those).

    With check=True a failure raises TestbedError carrying the command, the namespace and stderr.
    """
    full = ns_argv(ns, argv)
    try:
        done = subprocess.run(full, input=input_text, capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError as exc:
        raise TestbedUnavailable(f"{full[0]}: not installed ({_INSTALL_HINT})") from exc
    except subprocess.TimeoutExpired as exc:
        raise TestbedError(f"timed out after {timeout_s} s: {' '.join(full)}") from exc
    if check and done.returncode != 0:
        where = f" in namespace {ns}" if ns else ""
        raise TestbedError(f"command failed{where} (exit {done.returncode}): {' '.join(argv)}\n"
                           f"{done.stderr.strip() or done.stdout.strip()}")
    return done


def succeeds(argv: list[str], *, ns: str | None = None, input_text: str | None = None) -> bool:
    """True when the command exits 0; False when it fails or its program is missing."""
    try:
        return run_command(argv, ns=ns, input_text=input_text, check=False).returncode == 0
    except TestbedUnavailable:
        return False


_INSTALL_HINT = "apt-get install nftables iptables ethtool iproute2 (see .ci/run)"

# Programs the testbed calls, and the Debian package that brings each one.
TOOLS = {"ip": "iproute2", "tc": "iproute2", "nft": "nftables", "iptables": "iptables",
         "ethtool": "ethtool", "sysctl": "procps", "iperf3": "iperf3", "mptcpize": "mptcpize"}

# Each qdisc with the smallest arguments it accepts.
QDISC_ARGS = {
    "tbf": ["tbf", "rate", "1mbit", "burst", "15k", "limit", "30k"],
    "htb": ["htb"], "pfifo": ["pfifo"], "bfifo": ["bfifo"],
    "netem": ["netem", "delay", "10ms"], "fq": ["fq"], "fq_codel": ["fq_codel"], "cake": ["cake"],
    "sfq": ["sfq"], "prio": ["prio"], "codel": ["codel"], "pie": ["pie"],
    "red": ["red", "limit", "400000", "avpkt", "1000", "bandwidth", "10mbit", "min", "30000", "max", "90000"],
}

# Ingress filters and actions, each added to an ingress qdisc on a veth (the IFB path needs u32+mirred).
TC_FILTERS = {
    "u32+mirred": ["u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", "probe-ifb"],
    "bpf+mirred": ["bpf", "bytecode", "1,6 0 0 0,", "action", "mirred", "egress", "redirect", "dev", "probe-ifb"],
    "matchall": ["matchall", "action", "mirred", "egress", "redirect", "dev", "probe-ifb"],
    "flower": ["flower", "action", "mirred", "egress", "redirect", "dev", "probe-ifb"],
    "gact": ["u32", "match", "u32", "0", "0", "action", "gact", "drop"],
    "police": ["u32", "match", "u32", "0", "0", "action", "police", "rate", "1mbit", "burst", "10k"],
}

# nftables expressions the testbed uses (and two it would like), each tried in an ip prerouting chain.
NFT_RULES = {
    "numgen": "numgen random mod 100000 < 500 counter drop",
    "tcp option mptcp exists": "tcp flags & (syn|ack) == syn tcp option mptcp exists drop",
    "tcp option mptcp subtype": "tcp flags & (syn|ack) == syn tcp option mptcp subtype 0 drop",
    "tcp option maxseg size set": "tcp flags syn tcp option maxseg size > 1200 tcp option maxseg size set 1200",
    "reset tcp option": "reset tcp option mptcp",
    "queue": "queue num 0 bypass",
}

XT_TARGETS_USED = ("TCPOPTSTRIP", "TCPMSS", "NFQUEUE")
XT_MATCHES_USED = ("comment", "statistic", "u32", "length")


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """The result of :func:`probe`: what exists here (True) and what does not (False)."""

    kernel_release: str
    is_root: bool
    netns: bool
    tools: dict[str, bool]
    veth: bool
    ifb: bool
    qdiscs: dict[str, bool]
    tc_filters: dict[str, bool]
    nft: dict[str, bool]
    xt_targets: dict[str, bool]
    xt_matches: dict[str, bool]
    mptcp: bool
    tfo: bool
    tcp_fastopen_connect: bool
    congestion_controls: tuple[str, ...]
    af_packet: bool = False   # raw AF_PACKET sockets (CAP_NET_RAW): what the delay line forwards with

    def delay_method(self) -> str | None:
        """How a path gets delay and jitter here: "netem" when the kernel has it, else "delay-line"
        (mpsim/testbed/delay.py; also every path with Gilbert-Elliott loss), None when neither works."""
        if self.qdiscs.get("netem"):
            return "netem"
        return "delay-line" if self.af_packet and self.veth else None

    def can_shape_rate(self) -> bool:
        return self.ifb and self.qdiscs.get("tbf", False) and self.tc_filters.get("u32+mirred", False)

    def missing(self, *, rate: bool = False, loss: bool = False, strip: bool = False,
                nft_middlebox: bool = False, delay_line: bool = False) -> list[str]:
        """What the requested emulation needs and this machine lacks, one readable line each."""
        lacks = []
        if not self.is_root:
            lacks.append("root privileges (network namespaces, qdiscs and netfilter need CAP_NET_ADMIN)")
        if not self.netns:
            lacks.append("`ip netns` (iproute2) or network namespace support")
        if self.netns and not self.veth:
            lacks.append("veth links")
        for tool in ("ip", "sysctl"):
            if not self.tools.get(tool):
                lacks.append(f"{tool} (apt-get install {TOOLS[tool]})")
        if rate:
            if not self.tools.get("tc") or not self.tools.get("ethtool"):
                lacks.append("tc and ethtool (apt-get install iproute2 ethtool)")
            if not self.can_shape_rate():
                lacks.append("rate shaping: needs an IFB device, the tbf qdisc and tc u32 + mirred")
        if loss and not self.nft.get("numgen"):
            lacks.append("random loss: nft with `numgen` in an ip prerouting hook (apt-get install nftables)")
        if strip and not (self.tools.get("iptables") and self.xt_targets.get("TCPOPTSTRIP")):
            lacks.append("MPTCP option stripping: iptables with the xt TCPOPTSTRIP target (apt-get install iptables)")
        if delay_line and not (self.af_packet and self.tools.get("ethtool")):
            lacks.append("the delay line: AF_PACKET sockets (root) and ethtool (apt-get install ethtool)")
        if nft_middlebox:
            for feature in ("tcp option mptcp subtype", "tcp option maxseg size set"):
                if not self.nft.get(feature):
                    lacks.append(f"middlebox rules: nft `{feature}` (apt-get install nftables)")
        return lacks

    def cannot_emulate(self) -> list[str]:
        """Plain statements of what the testbed cannot do on this machine, and why."""
        out = []
        if not self.qdiscs.get("netem"):
            if self.af_packet and self.veth:
                out.append("netem's delay distributions and reordering: no netem qdisc (paths get delay, FIFO "
                           "jitter and Gilbert-Elliott loss from the project's delay line: docs/testbed.md)")
            else:
                out.append("propagation delay: no netem qdisc and no AF_PACKET sockets for the delay line")
        if not self.qdiscs.get("fq"):
            out.append("EDT pacing or eBPF delay: no fq qdisc")
        aqm = [q for q in ("fq_codel", "cake", "codel", "pie", "red", "sfq") if self.qdiscs.get(q)]
        if not aqm:
            out.append("AQM (fq_codel, cake, codel, pie, red, sfq): none available; queues are drop-tail")
        if not self.nft.get("queue"):
            out.append("native nft `queue` (use iptables -j NFQUEUE instead)")
        if not self.mptcp:
            out.append("MPTCP: not enabled or not built into this kernel")
        if not self.tfo:
            out.append("TCP Fast Open: net.ipv4.tcp_fastopen is missing")
        for tool in ("iperf3", "mptcpize"):
            if not self.tools.get(tool):
                out.append(f"{tool} is not installed (apt-get install {TOOLS[tool]})")
        return out

    def as_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["cannot_emulate"] = self.cannot_emulate()
        return data


def _probe_namespace(ns: str) -> dict:
    """Try every feature in the scratch namespace `ns` (already created)."""
    found: dict = {}
    found["veth"] = succeeds(["ip", "-n", ns, "link", "add", "probe-a", "type", "veth", "peer", "name", "probe-b"])
    found["ifb"] = succeeds(["ip", "-n", ns, "link", "add", "probe-ifb", "type", "ifb"])
    qdiscs = {}
    for name, args in QDISC_ARGS.items():
        qdiscs[name] = found["ifb"] and succeeds(["tc", "-n", ns, "qdisc", "add", "dev", "probe-ifb", "root", *args])
        if qdiscs[name]:
            succeeds(["tc", "-n", ns, "qdisc", "del", "dev", "probe-ifb", "root"])
    found["qdiscs"] = qdiscs
    ingress = found["veth"] and succeeds(["tc", "-n", ns, "qdisc", "add", "dev", "probe-a", "handle", "ffff:",
                                          "ingress"])
    qdiscs["ingress"] = ingress
    found["tc_filters"] = {
        name: ingress and found["ifb"] and succeeds(
            ["tc", "-n", ns, "filter", "add", "dev", "probe-a", "parent", "ffff:", "protocol", "all",
             "prio", str(prio), *args])
        for prio, (name, args) in enumerate(TC_FILTERS.items(), start=1)}
    nft_ok = succeeds(["nft", "-f", "-"], ns=ns, input_text=(
        "table ip probe {\n chain pre {\n type filter hook prerouting priority -300; policy accept;\n }\n}\n"))
    found["nft"] = {"ip prerouting hook": nft_ok} | {
        name: nft_ok and succeeds(["nft", "add", "rule", "ip", "probe", "pre", *rule.split()], ns=ns)
        for name, rule in NFT_RULES.items()}
    # The global xt lists name every built-in target and match; one real rule proves iptables works.
    targets = _read_lines("/proc/net/ip_tables_targets")
    matches = _read_lines("/proc/net/ip_tables_matches")
    iptables_ok = succeeds(["iptables", "-t", "mangle", "-A", "PREROUTING", "-p", "tcp", "--tcp-flags",
                            "SYN,ACK", "SYN", "-j", "TCPOPTSTRIP", "--strip-options", "30"], ns=ns)
    found["xt_targets"] = {t: iptables_ok and t in targets for t in XT_TARGETS_USED}
    found["xt_matches"] = {m: iptables_ok and m in matches for m in XT_MATCHES_USED}
    return found


def _read_lines(path: str) -> set[str]:
    try:
        with open(path) as f:
            return {line.strip() for line in f}
    except OSError:
        return set()


def _mptcp_socket_works() -> bool:
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP).close()
        return True
    except OSError:
        return False


def _af_packet_works() -> bool:
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close()
        return True
    except (OSError, AttributeError):
        return False


def _fastopen_connect_works() -> bool:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_CONNECT, 1)
        return True
    except OSError:
        return False


@functools.cache
def probe() -> Capabilities:
    """Probe this machine once per process (about a second); later calls return the same result."""
    is_root = os.geteuid() == 0
    tools = {tool: shutil.which(tool) is not None for tool in TOOLS}
    netns = is_root and tools["ip"] and succeeds(["ip", "netns", "list"])
    found: dict = {"veth": False, "ifb": False, "qdiscs": {}, "tc_filters": {}, "nft": {},
                   "xt_targets": {}, "xt_matches": {}}
    if netns:
        scratch = f"mps-{os.getpid()}-probe"
        succeeds(["ip", "netns", "del", scratch])  # a leftover of an earlier process with our pid
        netns = succeeds(["ip", "netns", "add", scratch])
        if netns:
            try:
                found = _probe_namespace(scratch)
            finally:
                succeeds(["ip", "netns", "del", scratch])
    return Capabilities(
        kernel_release=machine_facts()["kernel_release"], is_root=is_root, netns=netns, tools=tools, **found,
        mptcp=read_sysctl_file("net/mptcp/enabled") == "1" and _mptcp_socket_works(),
        tfo=read_sysctl_file("net/ipv4/tcp_fastopen") is not None,
        tcp_fastopen_connect=_fastopen_connect_works(),
        af_packet=is_root and _af_packet_works(),
        congestion_controls=tuple((read_sysctl_file("net/ipv4/tcp_available_congestion_control") or "").split()),
    )


def read_sysctl_file(name: str) -> str | None:
    """A sysctl of the current namespace by its /proc/sys path (net/ipv4/...), or None if absent."""
    try:
        with open(f"/proc/sys/{name}") as f:
            return f.read().strip()
    except OSError:
        return None


# --- facts recorded with every run -------------------------------------------------------------

# Sysctls that change what a run measures; read per namespace (most are per network namespace).
RECORDED_SYSCTLS = (
    "net.mptcp", "net.ipv4.tcp_fastopen", "net.ipv4.tcp_congestion_control", "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem", "net.ipv4.tcp_mtu_probing", "net.ipv4.tcp_ecn", "net.ipv4.tcp_sack",
    "net.ipv4.tcp_timestamps", "net.ipv4.tcp_syn_retries", "net.ipv4.ip_forward",
    "net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter", "net.core.rmem_max", "net.core.wmem_max",
)


def read_sysctls(ns: str | None, names: tuple[str, ...] = RECORDED_SYSCTLS) -> dict[str, str]:
    """Current values in namespace `ns` (a prefix such as net.mptcp expands to all its keys)."""
    out = run_command(["sysctl", *names], ns=ns, check=False).stdout
    values = {}
    for line in out.splitlines():
        key, sep, value = line.partition(" = ")
        if sep:
            values[key.strip()] = value.strip()
    return values


def parse_netstat(text: str) -> dict[str, int]:
    """/proc/net/netstat (pairs of header and value lines) as {"MPTcpExt.MPJoinSynAckRx": n, ...}."""
    counters = {}
    lines = text.splitlines()
    for header, values in zip(lines[::2], lines[1::2]):
        group, _, names = header.partition(":")
        vgroup, _, numbers = values.partition(":")
        if group != vgroup:
            raise TestbedError(f"unexpected /proc/net/netstat layout near {group!r}")
        counters.update({f"{group}.{n}": int(v) for n, v in zip(names.split(), numbers.split())})
    return counters


def read_netstat(ns: str | None) -> dict[str, int]:
    """TcpExt, IpExt and MPTcpExt counters of namespace `ns` (/proc/net/netstat is per namespace)."""
    return parse_netstat(run_command(["cat", "/proc/net/netstat"], ns=ns).stdout)


def kernel_facts() -> dict:
    """Machine-wide facts: kernel, CPUs, the root namespace's default congestion control."""
    facts = machine_facts()
    return {"kernel_release": facts["kernel_release"], "kernel_version": facts["kernel_version"],
            "machine": facts["machine"], "cpus": facts["cpu_count"], "python": facts["python"],
            "root_ns_congestion_control": read_sysctl_file("net/ipv4/tcp_congestion_control")}


def report(caps: Capabilities) -> str:
    """A plain-text report of the probe: what works, what is missing, what cannot be emulated."""
    def flags(mapping: dict[str, bool]) -> str:
        yes = [k for k, v in mapping.items() if v]
        no = [k for k, v in mapping.items() if not v]
        return f"yes: {', '.join(yes) or '-'}; no: {', '.join(no) or '-'}"
    lines = [
        f"kernel {caps.kernel_release}; root {caps.is_root}; ip netns {caps.netns}; veth {caps.veth}; ifb {caps.ifb}",
        f"tools      {flags(caps.tools)}",
        f"qdiscs     {flags(caps.qdiscs)}",
        f"tc         {flags(caps.tc_filters)}",
        f"nft        {flags(caps.nft)}",
        f"xt targets {flags(caps.xt_targets)}",
        f"xt matches {flags(caps.xt_matches)}",
        f"MPTCP {caps.mptcp}; TFO {caps.tfo}; TCP_FASTOPEN_CONNECT {caps.tcp_fastopen_connect}; "
        f"congestion controls {' '.join(caps.congestion_controls)}",
        f"delay method for paths: {caps.delay_method() or 'none'}",
        "cannot emulate here:",
        *(f"  - {item}" for item in caps.cannot_emulate()),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(probe()))
