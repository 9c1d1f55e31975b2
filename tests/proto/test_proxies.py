"""Proxies by name (mpsim/proto/proxies.py): the one builder, and which proxy a scheme gets."""

import random
from ipaddress import IPv4Address

import pytest

from mpsim.proto.catalogue import PROXIES, SCHEMES, UnknownComponentError
from mpsim.proto.convert import ConverterHost
from mpsim.proto.mp_convert_proxy import MpConvertProxyHost
from mpsim.proto.proxies import Placement, ProxySettings, build_proxy_host, proxy_for_scheme
from mpsim.proto.socks5_proxy import Socks5ProxyHost

UP, DOWN, IN = IPv4Address("198.18.1.1"), IPv4Address("198.18.2.1"), IPv4Address("198.18.4.1")
BESIDE = ProxySettings(port=1234, client_prefixes=("198.18.0.0/24",))


def test_the_three_proxies_are_registered_and_built_by_name():
    assert set(PROXIES.names()) == {"convert", "mp-convert", "socks5"}  # in the order their modules were imported
    kinds = {"convert": ConverterHost, "mp-convert": MpConvertProxyHost, "socks5": Socks5ProxyHost}
    for name, cls in kinds.items():
        host = build_proxy_host(name, "proxy", {"up": UP, "down": DOWN}, rng=random.Random(1), settings=BESIDE)
        assert type(host) is cls and host.name == "proxy"


def test_the_converter_offers_mptcp_to_servers_only_when_asked():
    plain = build_proxy_host("convert", "p", {"up": UP, "down": DOWN}, rng=random.Random(1), settings=BESIDE)
    both = build_proxy_host("convert", "p", {"up": UP, "down": DOWN}, rng=random.Random(1),
                            settings=ProxySettings(port=1234, convert_mptcp=True))
    assert 30 not in plain.converter.policy.supported_kinds and 30 in both.converter.policy.supported_kinds


def test_only_an_intercepting_proxy_sits_on_the_path():
    on_path = ProxySettings(port=1234, placement=Placement.ON_PATH)
    host = build_proxy_host("mp-convert", "p", {"up": UP, "down": DOWN, "in": IN}, rng=random.Random(1),
                            settings=on_path)
    assert host.proxy_policy.implicit and host.proxy_policy.explicit_ports == (1234,)
    with pytest.raises(ValueError, match="proxy 'convert' cannot sit on the path .*: mp-convert"):
        build_proxy_host("convert", "p", {"up": UP, "down": DOWN, "in": IN}, rng=random.Random(1), settings=on_path)
    with pytest.raises(ValueError, match=r"needs the interfaces \['down', 'in', 'up'\]"):
        build_proxy_host("mp-convert", "p", {"up": UP, "down": DOWN}, rng=random.Random(1), settings=on_path)
    with pytest.raises(UnknownComponentError, match="did you mean socks5"):
        build_proxy_host("sock5", "p", {"up": UP, "down": DOWN}, rng=random.Random(1), settings=BESIDE)


def test_each_scheme_gets_the_proxy_it_names():
    for name in SCHEMES.names():
        named = SCHEMES.get(name).proxy
        assert proxy_for_scheme(name) == (named or "convert")
        assert PROXIES.get(proxy_for_scheme(name, Placement.ON_PATH)).on_path
    assert proxy_for_scheme("socks5") == "socks5" and proxy_for_scheme("syn-payload-eol") == "mp-convert"
