"""A new signalling scheme is one module: a toy scheme, written to a temporary file and imported
from there, registers itself and runs end to end through a ClientHost in the deterministic
harness, through the SYN budget (and ``mpsim wire budget``), through the scenario schema, loader
and simulator, and through the truth table (its declared variants), with no other file touched
(docs/design.md section 9). The six built-in schemes honour the contract other code reads.

The toy, ``toy-exid``: plain TCP to the server, its SYN carrying an RFC 6994 experimental option
(kind 253, ExID 0x4d50, 4 bytes). It reads the SYN-ACK (an echo of the option would mean the
server knows the experiment) and gives up on an unanswered SYN after the proxy schedule (SYNs at
0, 1, 3 s), then the lifecycle falls back to direct plain TCP on a new port. It declares two
truth-table variants: the default policy, and one that gives up on its first unanswered SYN.
"""

from __future__ import annotations

import importlib.util
import random
import sys
import textwrap

import pytest

from mpsim import cli, syn_budget
from mpsim.experiment import results, schema, scenario as sc
from mpsim.proto import truth_table
from mpsim.proto.components import SCHEMES, UnknownComponentError
from mpsim.proto.client import ClientHost, ClientPolicy, Request
from mpsim.proto.harness import Harness, drop_matching
from mpsim.proto.events import FallbackReason, Outcome
from mpsim.proto.relay import ConverterTiming
from mpsim.proto.schemes import SignallingScheme, TableVariant
from mpsim.proto.server import ResponderApp, ServerHost, ServerKind
from mpsim.proto.truth_table import CLIENT, SERVER, SERVER_PORT
from mpsim.wire.options import Experimental
from mpsim.wire.segment import TcpFlags

TOY_MODULE = '''
"""toy-exid: plain TCP whose SYN carries an RFC 6994 experimental option (a test's toy)."""

from mpsim.proto.schemes.base import SchemeSyn, SignallingScheme, SynAckJudge, TableVariant, register
from mpsim.proto.tcp import TcpExtension
from mpsim.wire.mp_convert import LINUX_SYN_OPTIONS
from mpsim.wire.options import Experimental

OPTION = Experimental(253, (0x4D50).to_bytes(2, "big"))


class _OptionOnSyn(TcpExtension):
    def syn_options(self, conn, retransmission):
        return (OPTION,)


class ToyExid(SignallingScheme):
    name = "toy-exid"
    description = "plain TCP with an RFC 6994 experimental option in the SYN"
    plain_tcp = True

    def truth_table_variants(self):
        return (TableVariant(self.name), TableVariant(f"{self.name} (one SYN)", {"proxy_syn_retries": 0}))

    def open(self, lc, now, proxy):
        attempt = lc.new_attempt(self)
        dest, port = lc.request.destination, lc.request.port
        lc.open_attempt(attempt, dest, port, now, extensions=(SynAckJudge(self, lc, attempt), _OptionOnSyn()),
                        policy=lc.proxy_tcp_policy())
        lc.send_rest(attempt, 0, now)
        lc.collect(attempt, now)

    def judge_synack(self, lc, attempt, conn, synack):
        if OPTION not in synack.options:
            lc.detail = "the server does not know the experiment"
        return None

    def syn(self, address, port):
        return SchemeSyn(self.name, (*LINUX_SYN_OPTIONS, OPTION), b"", "+ an RFC 6994 experimental option")


TOY = register(ToyExid())
'''

ONE_WAY_S = 0.030
REQUEST = Request(SERVER, SERVER_PORT, request_size_bytes=100, response_size_bytes=1000)


@pytest.fixture
def toy_scheme(tmp_path):
    """The toy module, written to a temporary file and imported from it; unregistered afterwards."""
    path = tmp_path / "toy_exid_scheme.py"
    path.write_text(textwrap.dedent(TOY_MODULE))
    with pytest.raises(UnknownComponentError):
        ClientPolicy(scheme="toy-exid")  # nothing knows it before its module is imported
    spec = importlib.util.spec_from_file_location("toy_exid_scheme", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module.TOY
    finally:
        sys.modules.pop(spec.name, None)
        if "toy-exid" in SCHEMES:
            SCHEMES.unregister("toy-exid")
    with pytest.raises(UnknownComponentError):
        ClientPolicy(scheme="toy-exid")


def _run(up_filters=()):
    rng = random.Random(1)
    harness = Harness()
    client = harness.add("client", ClientHost("client", {"eth0": CLIENT}, rng=rng,
                                              policy=ClientPolicy(scheme="toy-exid")))
    harness.add("server", ServerHost("server", SERVER, ServerKind.LEGACY_DROP, rng=rng, ports=(SERVER_PORT,),
                                     app=ResponderApp(1000, request_size_bytes=REQUEST.request_size_bytes)))
    harness.link("client", "eth0", "server", "eth0", ONE_WAY_S, a_to_b=list(up_filters))
    client.connect(REQUEST, 0.0)
    harness.run(60.0)
    (record,) = client.finished
    syns = [d for d in harness.log if d.src == "client" and d.packet.segment.flags == TcpFlags.SYN]
    return record, syns


def test_toy_scheme_runs_end_to_end_through_a_client_host(toy_scheme):
    assert SCHEMES.get("toy-exid") is toy_scheme and toy_scheme.proxy is None
    record, syns = _run()
    rtt_s = 2 * ONE_WAY_S
    assert (record.scheme, record.outcome, record.fallback_reason, record.attempts) == ("toy-exid", "tcp", None, 1)
    assert record.detail == "the server does not know the experiment"  # the toy's own SYN-ACK judgement
    assert record.first_byte_time_s == pytest.approx(2 * rtt_s) and record.bytes_delivered == 1000
    (syn,) = syns
    assert Experimental(253, b"\x4d\x50") in syn.packet.segment.options


def test_toy_scheme_falls_back_through_the_shared_lifecycle(toy_scheme):
    # A middlebox drops every SYN with the experimental option: the toy's SYNs go at 0, 1 and 3 s
    # (its policy), it gives up at 7 s, and the lifecycle falls back to direct TCP on a new port.
    drop_toy = drop_matching(lambda p: any(isinstance(o, Experimental) for o in p.segment.options))
    record, syns = _run([drop_toy])
    assert (record.outcome, record.fallback_reason, record.attempts, record.syns_sent) == \
        ("fallback_tcp", "converter_syn_timeout", 2, 4)
    # The harness logs a dropped packet when it enters the hop, a delivered one when it arrives.
    assert [d.time_s - (0.0 if d.dropped else ONE_WAY_S) for d in syns] == pytest.approx([0.0, 1.0, 3.0, 7.0])
    assert [d.dropped for d in syns] == [True, True, True, False]
    assert record.setup_time_s == pytest.approx(7.0 + 2 * ONE_WAY_S)


def test_toy_scheme_has_a_syn_budget_row_and_the_cli_prints_it(toy_scheme, capsys):
    row = next(r for r in syn_budget.syn_budget(SERVER, SERVER_PORT) if r.scheme == "toy-exid")
    # Linux's 20 option bytes + kind 253 with its ExID (4 bytes, RFC 6994 section 3).
    assert (row.syn_option_bytes, row.syn_payload_bytes, row.fits, row.rtts_to_first_response_byte) == \
        (24, 0, True, 2)
    assert cli.main(["wire", "budget", "--destination", f"{SERVER}:{SERVER_PORT}"]) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["toy-exid", "24/40", "0", "yes", "2", "+", "an", "RFC", "6994", "experimental", "option"] in lines


def test_a_module_in_the_schemes_package_is_found_without_any_other_change(tmp_path, monkeypatch):
    # The package's directory, extended by a temporary one holding the toy module: load_schemes
    # (which runs when the package is first imported) finds and imports it after the built-in ones.
    from mpsim.proto import schemes

    (tmp_path / "toy_exid.py").write_text(textwrap.dedent(TOY_MODULE))
    monkeypatch.setattr(schemes, "__path__", [*schemes.__path__, str(tmp_path)])
    try:
        assert schemes.load_schemes() == (*schemes.BUILT_IN, "toy_exid")
        assert SCHEMES.names()[-1] == "toy-exid" and "toy-exid" not in SCHEMES.names()[:6]
        assert ClientPolicy(scheme="toy-exid").scheme == "toy-exid"
    finally:
        sys.modules.pop("mpsim.proto.schemes.toy_exid", None)
        vars(schemes).pop("toy_exid", None)  # the import set it as an attribute of the package
        if "toy-exid" in SCHEMES:
            SCHEMES.unregister("toy-exid")


# --- the contract the scenario schema, the truth table and the experiment layer read ---------------


def test_the_six_schemes_and_their_contract():
    expected = {"plain": None, "mptcp": None, "mp-convert-option": "mp-convert", "syn-payload-eol": "mp-convert",
                "convert": "convert", "socks5": "socks5"}
    assert SCHEMES.names()[:6] == tuple(expected)
    for name, proxy in expected.items():
        scheme = SCHEMES.get(name)
        assert isinstance(scheme, SignallingScheme) and scheme.name == name and scheme.proxy == proxy
        assert isinstance(scheme.description, str) and scheme.description and "\n" not in scheme.description
        assert scheme.implicit_capable is (name in ("mp-convert-option", "syn-payload-eol"))
        assert scheme.syn(SERVER, SERVER_PORT).scheme == name


def test_a_scheme_without_its_contract_is_refused():
    from mpsim.proto.schemes import register

    class Nameless(SignallingScheme):
        description = "no name"

    class TwoLines(SignallingScheme):
        name = "two-lines"
        description = "one\ntwo"

    with pytest.raises(ValueError, match="non-empty string name"):
        register(Nameless())
    with pytest.raises(ValueError, match="one line"):
        register(TwoLines())
    with pytest.raises(ValueError, match="'plain' is registered already"):
        register(SCHEMES.get("plain"))
    assert "two-lines" not in SCHEMES


# --- the scenario schema, the loader and the simulator ---------------------------------------------

SCENARIO = """description = "one request on one path"
duration_s = 30.0
[client]
scheme = "plain"
[paths.a]
delay_s = 0.01
[workload]
arrivals = "one"
"""
#: The scenario's client-server RTT: path a's 10 ms and the server link's 20 ms, each way.
SCENARIO_RTT_S = 2 * (0.010 + 0.020)


def _schema_scheme_names() -> tuple[list[str], list[str]]:
    defs = schema.json_schema()["$defs"]
    return (defs["ClientSpec"]["properties"]["scheme"]["enum"],
            defs["WorkloadSpec"]["properties"]["schemes"]["items"]["enum"])


def _load(*overrides):
    return sc.load_text(SCENARIO, name="toy", source="toy.toml", overrides=overrides)


def test_the_scenario_schema_and_loader_take_the_toy_scheme_while_it_is_registered(toy_scheme):
    client_names, workload_names = _schema_scheme_names()
    assert client_names[-1] == "toy-exid" and workload_names[-1] == "toy-exid"
    loaded = _load("client.scheme=toy-exid")
    assert loaded.variants["base"].client.scheme == "toy-exid"


def test_without_its_module_the_toy_scheme_is_refused_by_the_schema_and_the_loader():
    # Before the toy's module is imported, or after the fixture unregistered it.
    assert "toy-exid" not in _schema_scheme_names()[0] and "toy-exid" not in _schema_scheme_names()[1]
    with pytest.raises(sc.ScenarioError) as info:
        _load("client.scheme=toy-exid")
    assert str(info.value).startswith("--set client.scheme=toy-exid: client.scheme: expected one of ")


def _simulated(*overrides):
    (row,) = results.run(_load("client.scheme=toy-exid", *overrides)).rows("connections")
    return row


def test_the_simulator_runs_the_toy_scheme(toy_scheme):
    # A clean path: the toy's SYN reaches the server, plain TCP, the first byte after 2 RTTs.
    row = _simulated()
    assert (row["scheme"], row["outcome"], row["fallback_reason"], row["attempts"], row["syns_sent"]) == \
        ("toy-exid", "tcp", None, 1, 1)
    assert row["first_byte_time_s"] == pytest.approx(2 * SCENARIO_RTT_S, abs=1e-3)
    # A box that drops SYNs with options it does not know (kind 253 among them): the toy's SYNs at
    # 0, 1, 3 s are lost, it gives up at 7 s, and the direct plain SYN then passes.
    row = _simulated("paths.a.middleboxes=drop-unknown-option-syns")
    assert (row["outcome"], row["fallback_reason"], row["attempts"], row["syns_sent"]) == \
        ("fallback_tcp", "converter_syn_timeout", 2, 4)
    assert row["first_byte_time_s"] == pytest.approx(7.0 + 2 * SCENARIO_RTT_S, abs=1e-3)


# --- the truth table ---------------------------------------------------------------------------------


def test_the_truth_table_has_the_variants_the_toy_scheme_declares(toy_scheme):
    rows = truth_table.variants()
    assert [v.label for v in rows[-2:]] == ["toy-exid", "toy-exid (one SYN)"]
    assert [v.label for v in truth_table.VARIANTS] == [v.label for v in rows]  # the name callers read
    plain, one_syn = rows[-2:]
    assert plain.policy == ClientPolicy(scheme="toy-exid") and plain.timing is ConverterTiming.RFC
    assert one_syn.policy == ClientPolicy(scheme="toy-exid", proxy_syn_retries=0)
    # The built-in schemes' ten rows come first, in the order docs/truth-table.md shows them.
    assert [v.label for v in rows[:-2]] == [
        "plain", "mptcp", "convert", "convert (socket timing)", "mp-convert-option",
        "mp-convert-option (implicit, proxy on path)", "syn-payload-eol",
        "syn-payload-eol (implicit, no proxy on path)", "syn-payload-eol (implicit, no proxy, continue)", "socks5"]


def test_the_truth_table_runs_the_toy_scheme_in_every_case(toy_scheme, monkeypatch):
    toy_rows = truth_table.variants()[-2:]
    # all_cases over the registered variants (here only the toy's, to keep the test short).
    monkeypatch.setattr(truth_table, "variants", lambda: toy_rows)
    cases = truth_table.all_cases(rngs=random.Random)
    assert len(cases) == 2 * len(truth_table.table_middleboxes()) * len(truth_table.table_servers())
    outcomes, reasons = {o.value for o in Outcome}, {r.value for r in FallbackReason} | {None}
    assert all(c.scheme == "toy-exid" and c.record is not None and c.record.outcome in outcomes
               and c.record.fallback_reason in reasons for c in cases)
    case = {(c.label, c.middlebox, c.server): c for c in cases}
    # Clean path: 1 RTT handshake, 1 RTT request and response.
    clean = case["toy-exid", "none", ServerKind.LEGACY_DROP]
    assert (clean.record.outcome, clean.first_byte_rtts, clean.record.syns_sent) == ("tcp", 2.0, 1)
    # SYNs with kind 253 dropped: SYNs at 0, 1, 3 s, given up at 7 s, then direct TCP (2 RTTs).
    dropped = case["toy-exid", "drop-unknown-option-syns", ServerKind.LEGACY_DROP]
    assert (dropped.record.outcome, dropped.record.fallback_reason, dropped.record.syns_sent) == \
        ("fallback_tcp", "converter_syn_timeout", 4)
    assert dropped.record.first_byte_time_s == pytest.approx(7.0 + 2 * truth_table.CLIENT_SERVER_RTT_S, abs=1e-9)
    # The declared policy is the one run: no retry, so the toy gives up when its first SYN's 1 s
    # RTO expires, and the direct SYN goes at 1 s.
    one_syn = case["toy-exid (one SYN)", "drop-unknown-option-syns", ServerKind.LEGACY_DROP]
    assert (one_syn.record.outcome, one_syn.record.syns_sent) == ("fallback_tcp", 2)
    assert one_syn.record.first_byte_time_s == pytest.approx(1.0 + 2 * truth_table.CLIENT_SERVER_RTT_S, abs=1e-9)


def test_without_its_module_the_toy_scheme_is_not_in_the_truth_table():
    assert not any(v.policy.scheme == "toy-exid" for v in truth_table.variants())
    assert len(truth_table.variants()) == 10


def test_bad_truth_table_declarations_are_refused():
    from mpsim.proto.schemes import register

    def scheme(variants=None, **attributes):
        cls = type("Bad", (SignallingScheme,), {"name": "bad", "description": "bad", **attributes})
        if variants is not None:
            cls.truth_table_variants = lambda self: variants
        return cls()

    with pytest.raises(ValueError, match="one-line label"):
        TableVariant("")
    with pytest.raises(ValueError, match="the scheme is the one declaring it"):
        TableVariant("bad", {"scheme": "plain"})
    with pytest.raises(ValueError, match="non-empty tuple of TableVariant"):
        register(scheme(()))
    with pytest.raises(ValueError, match="labels repeat"):
        register(scheme((TableVariant("x"), TableVariant("x"))))
    with pytest.raises(ValueError, match="truth_table_rank is an int"):
        register(scheme(truth_table_rank=1.5))
    assert "bad" not in SCHEMES
    # A label another scheme declares, and a policy field ClientPolicy lacks: the table says so.
    for variants, message in (((TableVariant("plain"),), "declared by more than one scheme: plain"),
                              ((TableVariant("bad", {"colour": "red"}),), "bad ClientPolicy fields")):
        register(scheme(variants))
        try:
            with pytest.raises(ValueError, match=message):
                truth_table.variants()
        finally:
            SCHEMES.unregister("bad")
    # The default: one variant named after the scheme, default policy, RFC timing, proxy beside.
    (default,) = scheme().truth_table_variants()
    assert default == TableVariant("bad") and dict(default.policy) == {}
