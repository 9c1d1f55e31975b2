"""The testbed's echo prober (mpsim/testbed/echo.py): the measure of a path as built
(docs/kernel-world.md, "The path as built"). The message format runs everywhere (hand-built vectors);
the round trips need root (a raw ICMP socket) and run on loopback, skipping elsewhere with the reason."""

import json
import os
import socket
import subprocess
import sys

import pytest

from mpsim.testbed import echo


def test_an_echo_request_is_rfc_792_with_the_internet_checksum():
    # RFC 792 "Echo or Echo Reply Message": type 8, code 0, checksum, identifier, sequence number,
    # data. Checksum (RFC 1071) by hand: 0x0800 + 0x0000 + 0x1234 + 0x0001 = 0x1a35, one's
    # complement 0xe5ca.
    assert echo.echo_request(socket.AF_INET, 0x1234, 1, b"") == bytes.fromhex("0800e5ca12340001")
    # With data: + 0xabcd = 0xc602, complement 0x39fd.
    assert echo.echo_request(socket.AF_INET, 0x1234, 1, b"\xab\xcd") == bytes.fromhex("080039fd12340001abcd")
    # An odd length is padded with a zero byte for the sum only: + 0xab00 = 0xc535 -> 0x3aca.
    assert echo.echo_request(socket.AF_INET, 0x1234, 1, b"\xab") == bytes.fromhex("08003aca12340001ab")


def test_an_icmpv6_echo_request_is_rfc_4443_with_the_checksum_left_to_the_kernel():
    # RFC 4443 4.1: type 128, code 0; the checksum covers a pseudo-header the raw socket's kernel
    # fills in (RFC 3542 3.1), so it is sent as zero.
    assert echo.echo_request(socket.AF_INET6, 0x1234, 1, b"\x01") == bytes.fromhex("800000001234000101")


@pytest.mark.parametrize("kwargs, named", [({"count": 0}, "count=0"), ({"interval_s": -1}, "interval_s=-1"),
                                           ({"timeout_s": 0}, "timeout_s=0")])
def test_bad_arguments_are_refused_in_one_line(kwargs, named):
    with pytest.raises(ValueError) as err:
        echo.round_trips("127.0.0.1", **kwargs)
    assert named in str(err.value) and "\n" not in str(err.value)


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.geteuid() != 0,
                    reason="a raw ICMP socket needs Linux and root")
@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
def test_round_trips_on_loopback_are_measured_in_microseconds(address):
    done = subprocess.run([sys.executable, "-m", "mpsim.testbed.echo", "--to", address, "--count", "5",
                           "--interval-s", "0.001"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["sent"] == 5 and len(out["rtts_s"]) == 5
    # Loopback answers in microseconds; a prober that timed its own wake-up or whole milliseconds
    # (as ping does above 100 ms) could not show this.
    assert all(0 < rtt < 0.005 for rtt in out["rtts_s"])
