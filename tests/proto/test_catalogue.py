"""The registry every component kind uses (mpsim/proto/catalogue.py)."""

import pytest

from mpsim.errors import MpsimError
from mpsim.proto.catalogue import Registry, UnknownComponentError


def test_names_in_registration_order_and_lookup():
    reg = Registry("widget")
    reg.register("b", 2)
    reg.register("a", 1)
    assert reg.names() == ("b", "a")
    assert reg.get("a") == 1 and "a" in reg and "c" not in reg and len(reg) == 2


def test_duplicate_refused_unless_replaced():
    reg = Registry("widget")
    reg.register("a", 1)
    with pytest.raises(ValueError, match="widget 'a' is registered already"):
        reg.register("a", 2)
    reg.register("a", 3, replace=True)
    assert reg.get("a") == 3


def test_unknown_name_suggests_the_closest():
    reg = Registry("middlebox")
    reg.register("strip-mptcp", object())
    with pytest.raises(UnknownComponentError) as info:
        reg.get("strip-mtpcp")
    assert str(info.value) == "unknown middlebox 'strip-mtpcp' (did you mean strip-mptcp?); known: strip-mptcp"
    assert isinstance(info.value, MpsimError) and isinstance(info.value, KeyError)


def test_unregister_and_bad_names():
    reg = Registry("widget")
    reg.register("a", 1)
    assert reg.unregister("a") == 1 and reg.names() == ()
    with pytest.raises(UnknownComponentError):
        reg.unregister("a")
    with pytest.raises(ValueError):
        reg.register("", 1)
    with pytest.raises(UnknownComponentError):
        reg.get(["unhashable"])
