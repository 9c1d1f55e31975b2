"""Per-path link emulation for the namespace testbed: rate, random loss and middlebox rules.

Everything here builds command lines or rule text and parses counter output; :mod:`netns` runs
them in the right namespace. The methods follow docs/testbed.md and the measured kernel notes:

- rate: an ingress qdisc on the receiving veth redirects every packet (u32 + mirred) to an IFB
  device whose root tbf qdisc does the shaping. Shaping at the receiver keeps the sender's own
  qdisc out of it, so the sender's TCP sees the queue only through its ACK clock. tbf counts L2
  bytes (1514 per full-size segment), so the TCP goodput ceiling is rate x 1448/1514.
- loss: nftables `numgen random mod 100000 < N drop` in an ip-family prerouting hook at priority
  -300 (ip6 in an IPv6 testbed), with named counters of packets seen and dropped. (A netdev
  ingress hook drops nothing once the IFB redirect is in place.) Only packets of the testbed's IP
  version are lost; ARP and neighbour discovery of the other family never are (an IPv6 testbed's
  ICMPv6 neighbour discovery is in the ip6 table, and may be lost, as the model's links lose any
  packet).
- middlebox: xt TCPOPTSTRIP (iptables, or ip6tables, mangle PREROUTING) strips the MPTCP option (kind 30);
  nftables drops MP_CAPABLE SYNs and SYNs with payload and clamps the MSS option. iptables'
  mangle hook (priority -150) runs before the nft middlebox chain (-140): a stripped SYN is not
  then dropped as an MP_CAPABLE SYN.
"""

from __future__ import annotations

import dataclasses
import json

from mpsim.proto.components import MIDDLEBOXES
from mpsim.testbed.probe import TestbedError

LOSS_RESOLUTION = 100_000  # numgen draws 0..99999, so loss_prob is applied in steps of 1e-5
MIN_BURST_BYTES = 15_000   # smaller tbf bursts undershoot the configured rate
MTU_FRAME_BYTES = 1514     # one full-size Ethernet frame as tbf counts it
MPTCP_OPTION_KIND = 30
DIRECTIONS = ("up", "down")  # up: client -> converter (towards the server); down: the reverse


@dataclasses.dataclass(frozen=True)
class Middlebox:
    """Interference by a middlebox on one path, applied to packets in both directions.

    strip_mptcp_syn / strip_mptcp_synack: remove the MPTCP option (kind 30) from SYNs (without ACK)
    or SYN-ACKs, as TCPOPTSTRIP does (the option bytes become NOPs).
    drop_mp_capable_syn: silently drop SYNs carrying MP_CAPABLE (MP_JOIN SYNs pass).
    drop_syn_data: silently drop SYNs carrying payload (IPv4 without IP options; IPv6 with TCP
      right after the fixed header).
    clamp_mss_bytes: lower the MSS option of every SYN and SYN-ACK to this value.
    """

    strip_mptcp_syn: bool = False
    strip_mptcp_synack: bool = False
    drop_mp_capable_syn: bool = False
    drop_syn_data: bool = False
    clamp_mss_bytes: int | None = None

    def __post_init__(self):
        if self.clamp_mss_bytes is not None and not 88 <= self.clamp_mss_bytes <= 65495:
            raise ValueError(f"clamp_mss_bytes={self.clamp_mss_bytes}: expected 88..65495")

    @property
    def uses_iptables(self) -> bool:
        return self.strip_mptcp_syn or self.strip_mptcp_synack

    @property
    def uses_nft(self) -> bool:
        return self.drop_mp_capable_syn or self.drop_syn_data or self.clamp_mss_bytes is not None


@dataclasses.dataclass(frozen=True)
class KernelMiddlebox:
    """How the testbed builds a catalogue middlebox (mpsim/proto/catalogue.py) in the kernel: the
    mechanism, the :class:`Middlebox` flags that do it, and where the kernel's box differs from
    the model's (empty: it does not)."""

    mechanism: str
    box: Middlebox
    difference: str = ""


#: The catalogue's middleboxes the testbed can build in the kernel, by catalogue name. Every other
#: registered middlebox it cannot build: :func:`kernel_middlebox` says so by name.
KERNEL_MIDDLEBOXES: dict[str, KernelMiddlebox] = {
    "strip-mptcp-syn": KernelMiddlebox("iptables TCPOPTSTRIP (mangle PREROUTING) on SYNs",
                                       Middlebox(strip_mptcp_syn=True)),
    "strip-mptcp-synack": KernelMiddlebox("iptables TCPOPTSTRIP (mangle PREROUTING) on SYN-ACKs",
                                          Middlebox(strip_mptcp_synack=True),
                                          "the option's bytes become NOPs; the model removes them (the header shrinks)"),
    "drop-mp-capable-syn": KernelMiddlebox("nft rule: tcp option mptcp subtype 0 on SYNs, drop",
                                           Middlebox(drop_mp_capable_syn=True)),
    "drop-syn-data": KernelMiddlebox("nft rules: SYN with ip length > headers (one per data offset), drop",
                                     Middlebox(drop_syn_data=True),
                                     "IPv4 packets without IP options, IPv6 packets without extension headers"),
}


def kernel_middlebox(name: str) -> KernelMiddlebox:
    """How the testbed builds the catalogue middlebox ``name``; a clear error for a name the
    catalogue does not know or the testbed cannot build."""
    MIDDLEBOXES.get(name)  # an unknown name: the catalogue's error, with a suggestion
    try:
        return KERNEL_MIDDLEBOXES[name]
    except KeyError:
        raise TestbedError(f"the testbed cannot build middlebox {name!r} in the kernel; it can build "
                           f"{', '.join(KERNEL_MIDDLEBOXES)}") from None


@dataclasses.dataclass(frozen=True)
class PathSpec:
    """One client-converter path. Rate and loss apply to both directions, independently.

    rate_bps: tbf rate in L2 bits per second, or None for an unshaped veth.
    loss_prob: probability that each IPv4 packet is dropped, in steps of 1e-5.
    queue_s: the shaper's queue, as time at rate_bps (limit = rate x queue_s, at least 2 frames
      above the burst).
    burst_bytes: tbf bucket; None picks max(15 KB, 1 ms at rate_bps).
    middlebox: interference on this path, or None.
    delay_s: one-way propagation delay, added in each direction (the round trip gains 2 x delay_s).
    jitter_s: each packet's delay varies uniformly by +-jitter_s (at most delay_s).
    gilbert_elliott: bursty loss in each direction, (p_good_to_bad, p_bad_to_good, loss_prob_good,
      loss_prob_bad) as in the model's GilbertElliott; applied by the delay line, besides loss_prob.
    loss_seeds: (up, down): the path's random loss (loss_prob or gilbert_elliott, not both) is then
      drawn by the delay line, not by nftables, each direction from ``random.Random(seed)``, for TCP
      frames only (ARP, neighbour discovery and ICMP pass undrawn): the kernel world gives the
      seeds of the model's link directions, so both worlds draw from one stream
      (docs/kernel-world.md, "Loss: one stream for both worlds").
    Delay, jitter and Gilbert-Elliott loss use netem where the kernel has it, else the project's
    delay line (mpsim/testbed/delay.py; docs/testbed.md); a path with loss_seeds always uses the
    delay line.
    """

    rate_bps: int | None = None
    loss_prob: float = 0.0
    queue_s: float = 0.05
    burst_bytes: int | None = None
    middlebox: Middlebox | None = None
    delay_s: float = 0.0
    jitter_s: float = 0.0
    gilbert_elliott: tuple[float, float, float, float] | None = None
    loss_seeds: tuple[int, int] | None = None

    def __post_init__(self):
        if not (isinstance(self.delay_s, (int, float)) and 0.0 <= self.delay_s <= 10.0):
            raise ValueError(f"delay_s={self.delay_s}: expected 0 <= delay_s <= 10 seconds")
        if not (isinstance(self.jitter_s, (int, float)) and 0.0 <= self.jitter_s <= self.delay_s):
            raise ValueError(f"jitter_s={self.jitter_s}: expected 0 <= jitter_s <= delay_s ({self.delay_s})")
        if self.gilbert_elliott is not None:
            ge = tuple(self.gilbert_elliott)
            if len(ge) != 4 or not all(isinstance(v, (int, float)) and 0.0 <= v <= 1.0 for v in ge) \
                    or ge[0] + ge[1] == 0:
                raise ValueError(f"gilbert_elliott={self.gilbert_elliott}: expected four probabilities "
                                 "(p_good_to_bad, p_bad_to_good, loss_prob_good, loss_prob_bad), the first two "
                                 "not both 0")
        if self.rate_bps is not None and not 8_000 <= self.rate_bps <= 100_000_000_000:
            raise ValueError(f"rate_bps={self.rate_bps}: expected None or 8e3..1e11 bit/s")
        if not 0.0 <= self.loss_prob < 1.0:
            raise ValueError(f"loss_prob={self.loss_prob}: expected 0 <= loss_prob < 1")
        if 0 < self.loss_prob and loss_threshold(self.loss_prob) == 0 and self.loss_seeds is None:
            raise ValueError(f"loss_prob={self.loss_prob}: below the rule's resolution of {1 / LOSS_RESOLUTION}")
        if self.loss_seeds is not None:
            seeds = tuple(self.loss_seeds)
            if len(seeds) != 2 or not all(type(v) is int and 0 <= v < 2**64 for v in seeds):
                raise ValueError(f"loss_seeds={self.loss_seeds}: expected (up, down), two integers 0..2**64-1")
            if self.loss_prob and self.gilbert_elliott:
                raise ValueError("loss_seeds: one loss process per path (loss_prob or gilbert_elliott), as the model has")
        if not 0.0 < self.queue_s <= 10.0:
            raise ValueError(f"queue_s={self.queue_s}: expected 0 < queue_s <= 10")
        if self.burst_bytes is not None and self.burst_bytes < MTU_FRAME_BYTES:
            raise ValueError(f"burst_bytes={self.burst_bytes}: at least one frame ({MTU_FRAME_BYTES} bytes)")

    @property
    def needs_delay(self) -> bool:
        """True when the path needs netem or the delay line (delay, jitter, bursty or seeded loss)."""
        return bool(self.delay_s or self.jitter_s or self.gilbert_elliott or self.delay_line_loss)

    @property
    def delay_line_loss(self) -> bool:
        """True when the delay line draws this path's loss from the given seeds (not nftables)."""
        return self.loss_seeds is not None and bool(self.loss_prob or self.gilbert_elliott)

    @property
    def nft_loss_prob(self) -> float:
        """The loss the nftables rule applies: loss_prob, unless the delay line draws it."""
        return 0.0 if self.delay_line_loss else self.loss_prob

    def delay_line_loss_argument(self) -> str | None:
        """The delay line's ``--loss`` for this path: Gilbert-Elliott, or with loss_seeds the path's
        Bernoulli loss_prob (exact: the model's float, not the nft rule's 1e-5 steps)."""
        if self.gilbert_elliott:
            return "ge:" + ",".join(repr(float(v)) for v in self.gilbert_elliott)
        if self.delay_line_loss:
            return f"bernoulli:{float(self.loss_prob)!r}"
        return None

    def tbf_sizes(self) -> tuple[int, int]:
        """(burst_bytes, limit_bytes) for this path's tbf qdisc."""
        assert self.rate_bps is not None
        bytes_per_s = self.rate_bps / 8
        burst = self.burst_bytes or max(MIN_BURST_BYTES, int(bytes_per_s * 0.001))
        limit = max(int(bytes_per_s * self.queue_s), burst + 2 * MTU_FRAME_BYTES)
        return burst, limit


def loss_threshold(loss_prob: float) -> int:
    """N in `numgen random mod 100000 < N`."""
    return round(loss_prob * LOSS_RESOLUTION)


def ifb_name(dev: str) -> str:
    name = f"ifb-{dev}"
    if len(name) > 15:
        raise TestbedError(f"interface name {name!r} is longer than 15 characters")
    return name


def rate_commands(dev: str, spec: PathSpec) -> list[list[str]]:
    """ip/tc argv lists (run inside the receiving namespace) that shape `dev`'s ingress."""
    ifb = ifb_name(dev)
    burst, limit = spec.tbf_sizes()
    return [
        ["ip", "link", "add", ifb, "type", "ifb"],
        ["ip", "link", "set", ifb, "up"],
        ["tc", "qdisc", "add", "dev", dev, "handle", "ffff:", "ingress"],
        ["tc", "filter", "add", "dev", dev, "parent", "ffff:", "protocol", "all", "u32", "match", "u32", "0", "0",
         "action", "mirred", "egress", "redirect", "dev", ifb],
        ["tc", "qdisc", "add", "dev", ifb, "root", "tbf", "rate", f"{spec.rate_bps}bit",
         "burst", str(burst), "limit", str(limit)],
    ]


def netem_commands(dev: str, spec: PathSpec) -> list[list[str]]:
    """tc argv (run in the sending namespace) for netem's delay and jitter on `dev`'s egress. Rate
    shaping stays at the receiver's ingress (IFB), so the two never share a qdisc. Gilbert-Elliott
    loss is not mapped to netem's gemodel here: such a path always uses the delay line."""
    args = ["delay", f"{spec.delay_s}s"]
    if spec.jitter_s:
        args += [f"{spec.jitter_s}s"]
    return [["tc", "qdisc", "add", "dev", dev, "root", "netem", *args, "limit", "100000"]]


def counter_name(kind: str, path_index: int, direction: str, what: str) -> str:
    return f"{kind}_path{path_index}_{direction}_{what}"


def loss_rules(dev: str, path_index: int, direction: str, loss_prob: float) -> tuple[list[str], list[str]]:
    """(counter names, rule lines) for the loss chain: count every packet, drop N in 100000."""
    seen = counter_name("loss", path_index, direction, "seen")
    dropped = counter_name("loss", path_index, direction, "dropped")
    rules = [f'iifname "{dev}" counter name "{seen}"',
             f'iifname "{dev}" numgen random mod {LOSS_RESOLUTION} < {loss_threshold(loss_prob)} '
             f'counter name "{dropped}" drop']
    return [seen, dropped], rules


SYN_ONLY = "tcp flags & (syn|ack) == syn"


def nft_middlebox_rules(dev: str, path_index: int, direction: str, box: Middlebox,
                        ip_version: int = 4) -> tuple[list[str], list[str]]:
    """(counter names, rule lines) for the nft part of a middlebox on ingress device `dev`, in
    the table of ``ip_version``'s family (:func:`nft_family`)."""
    counters, rules = [], []

    def add(what: str, lines: list[str]):
        name = counter_name("mb", path_index, direction, what)
        counters.append(name)
        rules.extend(line.format(counter=f'counter name "{name}"') for line in lines)

    if box.drop_mp_capable_syn:
        # Subtype 0 is MP_CAPABLE; MP_JOIN SYNs (subtype 1) pass.
        add("drop_mpc_syn", [f'iifname "{dev}" {SYN_ONLY} tcp option mptcp subtype 0 {{counter}} drop'])
    if box.drop_syn_data:
        # nft cannot subtract header lengths, so one rule per TCP data offset: payload exists when
        # the IP total length exceeds 20 (no IP options) + 4 x doff.
        if ip_version == 6:
            # The IPv6 payload length counts the TCP segment only (no extension headers: TCP is
            # the next header of the fixed one, RFC 8200 section 3).
            add("drop_syn_data", [f'iifname "{dev}" {SYN_ONLY} ip6 nexthdr tcp tcp doff {doff} '
                                  f'ip6 length > {4 * doff} {{counter}} drop' for doff in range(5, 16)])
        else:
            add("drop_syn_data", [f'iifname "{dev}" {SYN_ONLY} ip hdrlength 5 tcp doff {doff} '
                                  f'ip length > {20 + 4 * doff} {{counter}} drop' for doff in range(5, 16)])
    if box.clamp_mss_bytes is not None:
        mss = box.clamp_mss_bytes
        add("clamp_mss", [f'iifname "{dev}" tcp flags syn tcp option maxseg size > {mss} '
                          f'tcp option maxseg size set {mss} {{counter}}'])
    return counters, rules


def iptables_middlebox_rules(dev: str, path_index: int, direction: str, box: Middlebox,
                             ip_version: int = 4) -> list[list[str]]:
    """iptables (IPv6: ip6tables) argv lists for the TCPOPTSTRIP part; each rule's comment names its
    counter."""
    out = []
    for wanted, flags, what in ((box.strip_mptcp_syn, "SYN", "strip_syn"),
                                (box.strip_mptcp_synack, "SYN,ACK", "strip_synack")):
        if wanted:
            out.append([iptables_command(ip_version), "-t", "mangle", "-A", "PREROUTING", "-i", dev, "-p", "tcp",
                        "--tcp-flags", "SYN,ACK", flags, "-m", "comment", "--comment",
                        counter_name("mb", path_index, direction, what),
                        "-j", "TCPOPTSTRIP", "--strip-options", str(MPTCP_OPTION_KIND)])
    return out


NFT_TABLE = "mpsim"
LOSS_PRIORITY = -300        # before conntrack (-200) and before any mangling
MIDDLEBOX_PRIORITY = -140   # after iptables' mangle (-150): strip first, then drop or clamp


def nft_family(ip_version: int) -> str:
    """The nftables family of the testbed's tables: ip, or ip6 for an IPv6 testbed."""
    return "ip6" if ip_version == 6 else "ip"


def iptables_command(ip_version: int) -> str:
    return "ip6tables" if ip_version == 6 else "iptables"


def nft_ruleset(counters: list[str], loss_lines: list[str], middlebox_lines: list[str], ip_version: int = 4) -> str:
    """The namespace's whole `table ip mpsim` (IPv6: `table ip6 mpsim`), ready for `nft -f -`."""
    chains = []
    for chain, priority, lines in (("loss", LOSS_PRIORITY, loss_lines),
                                   ("middlebox", MIDDLEBOX_PRIORITY, middlebox_lines)):
        if lines:
            chains.append(f"  chain {chain} {{\n    type filter hook prerouting priority {priority}; policy accept;\n"
                          + "".join(f"    {line}\n" for line in lines) + "  }\n")
    declared = "".join(f"  counter {name} {{ }}\n" for name in counters)
    return f"table {nft_family(ip_version)} {NFT_TABLE} {{\n{declared}{''.join(chains)}}}\n"


def parse_nft_counters(json_text: str) -> dict[str, int]:
    """`nft -j list counters table ip mpsim` as {"<name>.packets": n, "<name>.bytes": n}."""
    out = {}
    for item in json.loads(json_text).get("nftables", []):
        counter = item.get("counter")
        if counter:
            out[f"{counter['name']}.packets"] = counter["packets"]
            out[f"{counter['name']}.bytes"] = counter["bytes"]
    return out


def parse_iptables_counters(save_text: str) -> dict[str, int]:
    """`iptables-save -c -t mangle` lines with an mpsim comment, as {"<comment>.packets": n, ...}."""
    out = {}
    for line in save_text.splitlines():
        if not line.startswith("[") or "--comment" not in line:
            continue
        packets, _, rest = line[1:].partition(":")
        nbytes = rest.partition("]")[0]
        name = line.split("--comment", 1)[1].split()[0].strip('"')
        out[f"{name}.packets"] = int(packets)
        out[f"{name}.bytes"] = int(nbytes)
    return out
