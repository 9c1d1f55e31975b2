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


def test_catalogue_imports_no_component_and_components_fills_every_registry():
    # catalogue.py is imported by the components to register themselves, so it must import none
    # of them (a cycle); mpsim/proto/components.py is the filled catalogue readers import.
    import json
    import subprocess
    import sys

    probe = (
        "import json, sys\n"
        "import mpsim.proto.catalogue as c\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('mpsim.proto.') and m != 'mpsim.proto.catalogue')\n"
        "empty = [len(r) for r in (c.SCHEMES, c.MIDDLEBOXES, c.PROXIES, c.SERVERS)]\n"
        "import mpsim.proto.components as k\n"
        "full = [len(r) for r in (k.SCHEMES, k.MIDDLEBOXES, k.PROXIES, k.SERVERS)]\n"
        "print(json.dumps([loaded, empty, full, sorted(k.PROXIES.names())]))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    loaded, empty, full, proxies = json.loads(out.stdout)
    assert loaded == [] and empty == [0, 0, 0, 0]
    assert all(n > 0 for n in full) and full[0] >= 6
    assert proxies == ["convert", "mp-convert", "socks5"]


def test_proxies_are_listed_in_one_order_whichever_module_is_imported_first():
    """The catalogue's listings (the generated docs and schema, error messages) must not depend on
    which proxy module a process happens to import first (a test session's order did change them)."""
    import subprocess
    import sys

    orders = set()
    for first in ("mpsim.proto.socks5_proxy", "mpsim.proto.mp_convert_proxy", "mpsim.proto.convert",
                  "mpsim.proto.components"):
        code = f"import {first}\nfrom mpsim.proto.components import PROXIES\nprint(','.join(PROXIES.names()))"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
        orders.add(done.stdout.strip())
    assert orders == {"convert,mp-convert,socks5"}
