"""What a scheme may use of the client is named in one place (docs/design.md section 9).

The scheme modules never import mpsim/proto/client.py (tests/test_layering.py keeps the import
graph free of cycles); they type their hooks against the protocols of
mpsim/proto/schemes/base.py instead. These tests keep those protocols honest in both directions:

- every name a scheme module reads, sets or calls on its logical connection (``lc.X``,
  ``lc.host.X``, ``lc.host.client_policy.X``, ``lc.request.X``) is declared in the protocol, and
  what a scheme assigns is declared as a plain attribute, not a read-only property;
- the client's classes (LogicalConnection, ClientHost, ClientPolicy, Request) have every
  declared member, and each declared method has the very parameters (names, kinds, defaults) of
  the client's method.
"""

from __future__ import annotations

import ast
import inspect
import pathlib
import random
from ipaddress import ip_address

import pytest

from mpsim.proto.client import ClientHost, ClientPolicy, LogicalConnection, Request
from mpsim.proto.schemes import base

SCHEMES_DIR = pathlib.Path(base.__file__).resolve().parent
SCHEME_MODULES = sorted(p for p in SCHEMES_DIR.glob("*.py") if p.name != "__init__.py")

#: Where a chain of attribute names off ``lc`` lands, and the protocol that declares what follows.
PROTOCOL_AT = {
    ("lc",): base.SchemeLifecycle,
    ("lc", "host"): base.SchemeHost,
    ("lc", "host", "client_policy"): base.SchemePolicy,
    ("lc", "request"): base.SchemeRequest,
}


def declared(protocol: type) -> set[str]:
    """The members a protocol declares: its annotated attributes, properties and methods."""
    members = set(protocol.__dict__.get("__annotations__", {}))
    members |= {name for name, value in vars(protocol).items()
                if not name.startswith("_") and (inspect.isfunction(value) or isinstance(value, property))}
    return members


def settable(protocol: type) -> set[str]:
    return set(protocol.__dict__.get("__annotations__", {}))


def _chain(node: ast.AST) -> list[str] | None:
    """``a.b.c`` -> ["a", "b", "c"]; None for anything not rooted at a plain name."""
    names: list[str] = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(names)]


def uses_on_lc(source: str) -> list[tuple[tuple[str, ...], str, bool, int]]:
    """(where, member, assigned, line) for every attribute a module uses off ``lc``. A local bound
    to ``lc.host`` or ``lc.request`` (``host = lc.host``) counts as that chain."""
    tree = ast.parse(source)
    aliases: dict[str, list[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            chain = _chain(node.value)
            if chain and chain[0] == "lc" and len(chain) > 1:
                aliases[node.targets[0].id] = chain
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        chain = _chain(node)
        if not chain:
            continue
        if chain[0] in aliases:
            chain = aliases[chain[0]] + chain[1:]
        if chain[0] != "lc":
            continue
        where, member = tuple(chain[:-1]), chain[-1]
        if where in PROTOCOL_AT:
            found.append((where, member, isinstance(node.ctx, ast.Store), node.lineno))
    return found


def undeclared_uses(source: str) -> list[str]:
    bad = []
    for where, member, assigned, line in uses_on_lc(source):
        protocol = PROTOCOL_AT[where]
        if member not in declared(protocol):
            bad.append(f"line {line}: {'.'.join(where)}.{member} is not declared in {protocol.__name__}")
        elif assigned and member not in settable(protocol):
            bad.append(f"line {line}: {'.'.join(where)}.{member} is assigned, but read-only in {protocol.__name__}")
    return bad


@pytest.mark.parametrize("path", SCHEME_MODULES, ids=lambda p: p.name)
def test_every_use_of_the_client_is_declared(path):
    bad = undeclared_uses(path.read_text())
    assert not bad, f"{path.name} uses what base.py's protocols do not declare:\n" + "\n".join(bad)


def test_the_use_check_can_fail():
    toy = ("def open(lc, now):\n"
           "    host = lc.host\n"
           "    lc.payload = b''\n"
           "    lc.host.client_policy.implicit\n"
           "    host.rng\n"
           "    lc.request.scheme\n"
           "    lc._finish(now)\n")
    assert sorted(undeclared_uses(toy)) == [
        "line 3: lc.payload is assigned, but read-only in SchemeLifecycle",
        "line 5: lc.host.rng is not declared in SchemeHost",
        "line 6: lc.request.scheme is not declared in SchemeRequest",
        "line 7: lc._finish is not declared in SchemeLifecycle",
    ]


def test_the_scheme_modules_use_the_client_at_all():
    # Guards the check above against finding nothing (a renamed ``lc`` would make it pass vacuously).
    wheres = {where for path in SCHEME_MODULES for where, *_ in uses_on_lc(path.read_text())}
    assert wheres == set(PROTOCOL_AT)


@pytest.fixture()
def lc() -> LogicalConnection:
    host = ClientHost("client", {"eth0": ip_address("198.18.0.1")}, rng=random.Random(1),
                      proxies=((ip_address("198.18.1.1"), 5124),))
    return LogicalConnection(host, 0, Request(ip_address("198.18.2.1"), 80), 0.0)


def test_the_client_satisfies_the_protocols(lc):
    assert isinstance(lc, base.SchemeLifecycle)
    assert isinstance(lc.host, base.SchemeHost)
    assert isinstance(lc.host.client_policy, base.SchemePolicy)
    assert isinstance(lc.request, base.SchemeRequest)
    assert isinstance(ClientPolicy(), base.SchemePolicy)


@pytest.mark.parametrize("protocol", [base.SchemeLifecycle, base.SchemeHost, base.SchemePolicy, base.SchemeRequest],
                         ids=lambda p: p.__name__)
def test_no_declared_member_is_missing(lc, protocol):
    instance = {base.SchemeLifecycle: lc, base.SchemeHost: lc.host, base.SchemePolicy: lc.host.client_policy,
                base.SchemeRequest: lc.request}[protocol]
    missing = sorted(name for name in declared(protocol) if not hasattr(instance, name))
    assert not missing, f"{type(instance).__name__} lacks {missing} that {protocol.__name__} declares"


def _parameters(function) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


def test_declared_methods_have_the_lifecycles_parameters():
    methods = [name for name, value in vars(base.SchemeLifecycle).items()
               if not name.startswith("_") and inspect.isfunction(value)]
    assert len(methods) >= 15
    differ = [name for name in methods
              if _parameters(getattr(base.SchemeLifecycle, name)) != _parameters(getattr(LogicalConnection, name))]
    assert not differ, f"SchemeLifecycle and LogicalConnection disagree on the parameters of {differ}"
