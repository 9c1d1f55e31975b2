"""The kernel world over IPv6 (``ip_version = 6``): the testbed's IPv6 plan and rules, the pcap
reading of IPv6 frames, and a scenario run ``--on kernel`` over IPv6 giving the simulator's
columns (root; skipped elsewhere with the reason, as the other kernel-world tests)."""

import ipaddress
import json
import struct
from pathlib import Path

import pandas as pd

from mpsim.cli import main
from mpsim.experiment import kernel_world
from mpsim.experiment.results import TABLES
from mpsim.testbed.netns import Testbed, host_address, subnet_network
from mpsim.testbed.shaping import Middlebox, iptables_middlebox_rules, nft_middlebox_rules, nft_ruleset

MODELS = Path(__file__).resolve().parents[2] / "models" / "kernel"


def test_the_testbeds_ipv6_plan_mirrors_the_ipv4_one_in_the_benchmarking_range():
    bench = ipaddress.IPv6Network("2001:2::/48")  # RFC 5180
    tb = Testbed(ip_version=6)  # not entered: only the plan
    a = tb.addresses
    assert (a.client, a.converter, a.server) == (("2001:2::1", "2001:2:0:1::1"), ("2001:2::2", "2001:2:0:1::2"),
                                                 "2001:2:0:1900::2")
    assert all(ipaddress.IPv6Address(x) in bench for x in (*a.client, *a.converter, a.server, a.converter_server_side))
    assert subnet_network("198.18.3", 6) == "2001:2:0:3::/64" and host_address("198.18.3", 1, 4) == "198.18.3.1"
    assert Testbed().addresses.server == "198.19.0.2"  # IPv4 unchanged


def test_ipv6_rules_use_the_ip6_family():
    counters, lines = nft_middlebox_rules("path0", 0, "up", Middlebox(drop_syn_data=True), ip_version=6)
    # IPv6's payload length counts the TCP segment only: data exists beyond 4 x doff bytes.
    assert lines[0] == ('iifname "path0" tcp flags & (syn|ack) == syn ip6 nexthdr tcp tcp doff 5 ip6 length > 20 '
                        'counter name "mb_path0_up_drop_syn_data" drop')
    assert nft_ruleset(counters, [], lines, ip_version=6).startswith("table ip6 mpsim {")
    assert nft_ruleset(counters, [], lines).startswith("table ip mpsim {")
    assert iptables_middlebox_rules("path0", 0, "up", Middlebox(strip_mptcp_syn=True), ip_version=6)[0][0] == \
        "ip6tables"


def _frame6(src: str, sport: int, flags: int) -> bytes:
    ip = struct.pack("!IHBB", 6 << 28, 20, 6, 64) + ipaddress.IPv6Address(src).packed + \
        ipaddress.IPv6Address("2001:2:0:1900::2").packed
    tcp = struct.pack("!HHIIBBHHH", sport, 80, 0, 0, 0x50, flags, 0, 0, 0)
    return b"\x00" * 12 + b"\x86\xdd" + ip + tcp


def test_pcap_reading_counts_ipv6_syns_and_rsts(tmp_path):
    frames = [(_frame6("2001:2::1", 40000, 0x02), 1.0), (_frame6("2001:2::1", 40000, 0x04), 2.0),
              (_frame6("2001:2:0:1900::2", 40000, 0x02), 3.0)]
    data = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 128, 1)
    for frame, t in frames:
        data += struct.pack("<IIII", int(t), 0, len(frame), len(frame)) + frame
    (tmp_path / "c.pcap").write_bytes(data)
    assert kernel_world.pcap_flags(tmp_path / "c.pcap", {"2001:2::1"}) == {40000: {"syns": [1.0], "rsts": [2.0]}}


def test_ipv6_endpoints_are_bracketed_for_the_programs():
    assert kernel_world.endpoint_text("2001:2::2", 1234) == "[2001:2::2]:1234"
    assert kernel_world.endpoint_text("198.18.0.2", 1234) == "198.18.0.2:1234"
    assert kernel_world.fill_proxy_cmd("p --listen {listen} --allow {allow}", ("2001:2::2", 1234),
                                       kernel_world.CLIENT_PREFIXES[6]) == \
        ["p", "--listen", "[2001:2::2]:1234", "--allow", "2001:2::/48"]


def test_run_on_kernel_over_ipv6_writes_the_simulators_columns(kernel_world, tmp_path, capsys):
    scenario = str(MODELS / "convert_two_path.toml")
    sets = ["--set", "ip_version=6", "--set", "transfers=[{start_s=0.0, size_bytes=200000, direction=\"download\"}]"]
    assert main(["run", scenario, *sets, "--out", str(tmp_path / "sim")]) == 0
    assert main(["run", scenario, *sets, "--on", "kernel", "--out", str(tmp_path / "kernel"), "--pcap"]) == 0
    capsys.readouterr()
    for table, columns in TABLES.items():
        sim = pd.read_csv(tmp_path / "sim" / f"{table}.csv")
        kernel = pd.read_csv(tmp_path / "kernel" / f"{table}.csv")
        assert list(kernel.columns) == list(sim.columns) == list(columns)
    sim = pd.read_csv(tmp_path / "sim" / "connections.csv")
    connections = pd.read_csv(tmp_path / "kernel" / "connections.csv")
    assert list(connections["outcome"]) == list(sim["outcome"]) == ["converted"]
    # The SYN count comes from the IPv6 capture; the live converter read an IPv6 Connect TLV.
    assert list(connections["syns_sent"]) == list(sim["syns_sent"]) == [1]
    # Each world's own server address (the testbed's plan is not the simulator's), IPv6 in brackets.
    assert (list(connections["destination"]), list(sim["destination"])) == (["[2001:2:0:1900::2]:80"],
                                                                            ["[2001:2:0:3::1]:80"])
    transfers = pd.read_csv(tmp_path / "kernel" / "transfers.csv")
    assert transfers["completed"].tolist() == [True] and transfers["subflows"].tolist() == [2]
    manifest = json.loads((tmp_path / "kernel" / "manifest.json").read_text())
    testbed = manifest["kernel"][0]["testbed"]
    assert testbed["ip_version"] == 6 and testbed["addresses"]["server"] == "2001:2:0:1900::2"
    assert "[2001:2::2]:1234" in manifest["kernel"][0]["proxy_argv"]
