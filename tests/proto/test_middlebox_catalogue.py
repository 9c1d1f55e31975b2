"""The middlebox catalogue (the registration block of mpsim/proto/middlebox.py)."""

import random
from ipaddress import IPv4Address, IPv4Network

import pytest

from mpsim.proto.catalogue import MIDDLEBOXES
from mpsim.proto.middlebox import PASS, BuiltBox, Nat, RewritePayload, Site
from mpsim.wire.segment import IpPacket, TcpFlags, TcpSegment

#: The names scenarios used before the catalogue (models/*.toml) and the truth table's other boxes.
SCENARIO_NAMES = ("strip-mptcp", "strip-mptcp-synack", "drop-unknown-option-syns", "drop-syn-data",
                  "drop-syn-data-or-unknown-options", "strip-syn-payload", "strip-tfo", "drop-rst",
                  "mirror-mp-capable")
TABLE_NAMES = ("drop-rst-both-ways", "seq-rewrite", "nat", "split-data")


def test_every_older_name_is_registered_once():
    names = MIDDLEBOXES.names()
    assert set(SCENARIO_NAMES + TABLE_NAMES) <= set(names) and len(set(names)) == len(names)


@pytest.mark.parametrize("name", MIDDLEBOXES.names())
def test_each_box_is_built_fresh_with_a_filter_per_direction(name):
    entry = MIDDLEBOXES.get(name)
    assert entry.name == name and entry.description
    first, second = entry.build(random.Random(1)), entry.build(random.Random(1))
    assert isinstance(first, BuiltBox) and first.policies
    assert (first.up, first.down) != (PASS, PASS)
    # New objects every time: flow tables and hit counters never carry over between attachments.
    assert not {id(p) for p in first.policies} & {id(p) for p in second.policies}
    assert all(p.hits == 0 for p in first.policies)


def test_unknown_parameters_are_refused_by_name():
    with pytest.raises(ValueError, match="middlebox 'nat' takes no parameter 'public' \\(its parameters: none\\)"):
        MIDDLEBOXES.get("nat").build(random.Random(1), public="198.18.0.9")


def test_the_nat_takes_its_public_address_from_the_site():
    box = MIDDLEBOXES.get("nat").build(random.Random(1), Site(IPv4Network("198.18.17.0/24")))
    (nat,) = box.policies
    assert isinstance(nat, Nat) and nat.public_addrs == (IPv4Address("198.18.17.200"),)


def test_the_alg_rewrites_the_clients_address_text_or_what_it_is_given():
    site = Site(IPv4Network("198.18.0.0/24"))
    (alg,) = MIDDLEBOXES.get("alg").build(random.Random(1), site).policies
    assert isinstance(alg, RewritePayload) and (alg.pattern, alg.replacement) == (b"198.18.0.1", b"198.18.0.200")
    up = MIDDLEBOXES.get("alg").build(random.Random(1), site, pattern=b"GET", replacement=b"PUT").up
    segment = TcpSegment(src_port=40000, dst_port=80, seq=1, ack=1, flags=TcpFlags.ACK, window=1000,
                         payload=b"GET /")
    (out,) = up(IpPacket(IPv4Address("198.18.0.1"), IPv4Address("198.18.3.1"), segment), 0.0)
    assert out.segment.payload == b"PUT /"
