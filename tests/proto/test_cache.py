"""The client caches and their four re-probe triggers (issue: caches that outlive a connection)."""

import pytest

from mpsim.proto.cache import CachePolicy, ClientCaches, ProxyState, ReprobeTrigger
from mpsim.proto.events import FallbackReason

PROXY = ("198.18.2.1", 1234)
OTHER = ("198.18.2.2", 1234)


def off_cache(now=0.0, **policy):
    caches = ClientCaches(CachePolicy(**policy))
    caches.mark_off(PROXY, now, FallbackReason.SIGNAL_NOT_ACKED)
    return caches


def test_fresh_proxy_is_usable():
    assert ClientCaches().proxy_usable(PROXY, 0.0)


def test_off_lasts_until_its_timer_then_reprobes():
    caches = off_cache(now=10.0, off_reprobe_s=100.0)
    assert not caches.proxy_usable(PROXY, 109.9)
    assert caches.get_timer() == 110.0
    caches.handle_timer(110.0)
    assert caches.proxy_usable(PROXY, 110.0)
    assert [(e.trigger, e.previous_state) for e in caches.events] == [(ReprobeTrigger.TIMER_EXPIRY, ProxyState.OFF)]
    assert caches.get_timer() is None


def test_off_without_timer_waits_for_another_trigger():
    caches = off_cache(off_reprobe_s=None)
    assert caches.get_timer() is None
    assert not caches.proxy_usable(PROXY, 1e9)


@pytest.mark.parametrize("trigger", ["new_proxy", "reboot", "network"])
def test_each_trigger_reprobes_an_off_proxy(trigger):
    caches = off_cache(off_reprobe_s=None)
    caches.mark_off(OTHER, 0.0, FallbackReason.CONVERTER_SYN_TIMEOUT)
    expected = {"new_proxy": ReprobeTrigger.NEW_PROXY_DISCOVERED, "reboot": ReprobeTrigger.HOST_REBOOT,
                "network": ReprobeTrigger.NETWORK_ATTACHMENT}[trigger]
    {"new_proxy": lambda: caches.new_proxy_discovered(PROXY), "reboot": caches.host_rebooted,
     "network": caches.network_attached}[trigger]()
    assert caches.proxy_usable(PROXY, 0.0)
    assert caches.events[0].trigger is expected
    # A new proxy re-probes only itself; the other two triggers re-probe everything.
    assert caches.proxy_usable(OTHER, 0.0) is (trigger != "new_proxy")


def test_backoff_value_zero_means_default_of_at_least_30_s():
    caches = ClientCaches()
    caches.mark_backoff(PROXY, 5.0, 0)
    assert caches.proxy(PROXY, 5.0).until_s == 35.0
    caches.mark_backoff(PROXY, 5.0, 120)
    assert caches.proxy(PROXY, 5.0).until_s == 125.0
    assert not caches.proxy_usable(PROXY, 124.0)
    assert caches.proxy_usable(PROXY, 125.0)


def test_cookie_survives_timer_but_not_reboot_or_new_network_by_default():
    caches = ClientCaches()
    caches.store_cookie(PROXY, b"\x01" * 8)
    caches.mark_backoff(PROXY, 0.0, 10)
    caches.handle_timer(10.0)
    assert caches.proxy(PROXY, 10.0).cookie == b"\x01" * 8
    caches.mark_off(PROXY, 10.0, FallbackReason.SIGNAL_NOT_ACKED)
    caches.network_attached()
    assert caches.proxy(PROXY, 10.0).cookie is None
    kept = ClientCaches(CachePolicy(keep_cookies_on_new_network=True))
    kept.store_cookie(PROXY, b"\x02" * 8)
    kept.network_attached()
    assert kept.proxy(PROXY, 0.0).cookie == b"\x02" * 8
    kept.host_rebooted()
    assert kept.proxy(PROXY, 0.0).cookie is None


def test_server_capabilities_are_lost_on_reboot():
    caches = ClientCaches()
    caches.learn_server("192.0.2.1", mptcp_capable=True, learned_via="extended_tcp_header")
    assert caches.server_mptcp_capable("192.0.2.1")
    caches.host_rebooted()
    assert not caches.server_mptcp_capable("192.0.2.1")


def test_unsupported_kinds_accumulate():
    caches = ClientCaches()
    caches.store_unsupported_kinds(PROXY, (29,))
    caches.store_unsupported_kinds(PROXY, (34, 29))
    assert caches.proxy(PROXY, 0.0).unsupported_kinds == (29, 34)


def test_not_authorized_is_not_usable():
    caches = ClientCaches()
    caches.mark_not_authorized(PROXY, 0.0)
    assert caches.proxy(PROXY, 1e6).state is ProxyState.NOT_AUTHORIZED
