"""The dissector file agrees with the Python codecs, ships as package data, and installs."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from mpsim import wireshark
from mpsim.cli import main
from mpsim.experiment.scenario import ConverterSpec
from mpsim.wire.convert import CONVERT_MAGIC, CONVERT_VERSION, ConvertErrorCode, ConvertTlvType
from mpsim.wire.mp_convert import MP_CONVERT_EXPERIMENT_ID

ROOT = Path(__file__).resolve().parents[2]
LUA_TEXT = wireshark.bundled_dissector_path().read_text()


def lua_table(name: str) -> dict[int, str]:
    """``local NAME = { [key] = "value", ... }`` of the Lua file, keys decimal or 0x hex."""
    body = re.search(rf"local {name} = \{{(.*?)\n\}}", LUA_TEXT, re.S)
    assert body, f"no table {name} in mpsim.lua"
    return {int(key, 0): value for key, value in re.findall(r'\[(0x[0-9A-Fa-f]+|\d+)\] = "([^"]*)"', body.group(1))}


def lua_constant(name: str) -> int:
    match = re.search(rf"local {name} = (0x[0-9A-Fa-f]+|\d+)", LUA_TEXT)
    assert match, f"no constant {name} in mpsim.lua"
    return int(match.group(1), 0)


def test_tlv_types_match_the_codec():
    assert lua_table("TLV_TYPES") == {
        int(t): {"EXTENDED_TCP_HEADER": "Extended TCP Header", "SUPPORTED_TCP_EXTENSIONS": "Supported TCP Extensions"}
        .get(t.name, t.name.title()) for t in ConvertTlvType}


def test_error_codes_match_the_codec():
    # Every code of mpsim.wire.convert (RFC 8803 section 6.2.8), named as the enum names it.
    table = lua_table("ERROR_CODES")
    assert set(table) == {int(code) for code in ConvertErrorCode}
    for code in ConvertErrorCode:
        assert table[code].replace(" ", "_").upper() == code.name


def test_constants_match_the_codec_and_the_scenario_default():
    assert lua_constant("CONVERT_VERSION") == CONVERT_VERSION
    assert lua_constant("CONVERT_MAGIC") == CONVERT_MAGIC
    assert lua_constant("MP_CONVERT_EXPERIMENT_ID") == MP_CONVERT_EXPERIMENT_ID
    default_port = next(f.default for f in dataclasses.fields(ConverterSpec) if f.name == "port")
    assert lua_constant("CONVERT_DEFAULT_PORT") == default_port


def test_the_lua_file_is_package_data():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["mpsim.wireshark"]
    assert any(wireshark.bundled_dissector_path().match(pattern) for pattern in patterns)


def test_install_copies_the_file_and_says_where(tmp_path, capsys):
    target_dir = tmp_path / "a" / "plugins"
    assert main(["wireshark", "install", "--dir", str(target_dir)]) == 0
    out = capsys.readouterr().out
    installed = target_dir / "mpsim.lua"
    assert str(installed) in out and installed.read_bytes() == wireshark.bundled_dissector_path().read_bytes()
    installed.write_text("-- an old copy\n")
    assert main(["wireshark", "install", "--dir", str(target_dir)]) == 0  # replaced
    assert installed.read_bytes() == wireshark.bundled_dissector_path().read_bytes()


def test_print_path(capsys):
    assert main(["wireshark", "install", "--print-path"]) == 0
    assert capsys.readouterr().out.strip() == str(wireshark.bundled_dissector_path())


def test_install_into_a_file_is_a_one_line_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["wireshark", "install", "--dir", str(blocker)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mpsim: error: plugin folder") and err.count("\n") == 1


def test_default_folders():
    assert wireshark.default_plugin_dir({"HOME": "/home/u"}, "linux") == Path("/home/u/.local/lib/wireshark/plugins")
    assert wireshark.default_plugin_dir({"APPDATA": "C:/Users/u/AppData/Roaming"}, "win32") == \
        Path("C:/Users/u/AppData/Roaming/Wireshark/plugins")
    with pytest.raises(wireshark.WiresharkInstallError, match="HOME is not set"):
        wireshark.default_plugin_dir({}, "linux")


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed (apt-get install tshark)")
def test_tshark_loads_the_installed_dissector(tmp_path):
    """Installed where tshark looks for personal Lua plugins, the dissector is found at start-up."""
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / ".config")}
    query = subprocess.run(["tshark", "-G", "folders"], capture_output=True, text=True, env=env, timeout=120,
                           check=True).stdout
    folder = next(Path(line.split(":", 1)[1].strip()) for line in query.splitlines()
                  if line.startswith("Personal Lua Plugins"))
    assert folder.is_relative_to(tmp_path)

    def protocols() -> set[str]:
        listing = subprocess.run(["tshark", "-G", "protocols"], capture_output=True, text=True, env=env,
                                 timeout=120, check=True).stdout
        return {line.split("\t")[2] for line in listing.splitlines() if line.count("\t") >= 2}

    assert "convert" not in protocols()
    wireshark.install(folder)
    assert {"convert", "mpconvert", "synpayload"} <= protocols()
