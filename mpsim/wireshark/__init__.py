"""The Wireshark dissector shipped with mpsim, and its installation (docs/wireshark.md).

``mpsim.lua`` (package data, next to this file) dissects RFC 8803 Convert messages, mpsim's
MP_CONVERT option and EOL-delimited SYN-payload options. Load it for one run with
``tshark -X lua_script:PATH``, or install it with :func:`install` (``mpsim wireshark install``)
into Wireshark's personal Lua plugin folder, which Wireshark and tshark read at start-up.

The folder is the one Wireshark itself reports (``tshark -G folders``, "Personal Lua Plugins")
when tshark is on the PATH; otherwise Wireshark's documented default: ``%APPDATA%\\Wireshark\\plugins``
on Windows, ``~/.local/lib/wireshark/plugins`` elsewhere (Wireshark 2.6 and later).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from mpsim.errors import MpsimError

DISSECTOR_FILE_NAME = "mpsim.lua"
#: tshark answers ``-G folders`` in well under a second; a hung binary must not hang the CLI.
TSHARK_QUERY_TIMEOUT_S = 20.0


class WiresharkInstallError(MpsimError):
    """The dissector could not be installed (a folder that cannot be created or written)."""


def bundled_dissector_path() -> Path:
    """The ``mpsim.lua`` shipped in this package (an installed mpsim has it as package data)."""
    path = Path(__file__).resolve().with_name(DISSECTOR_FILE_NAME)
    if not path.is_file():
        raise WiresharkInstallError(f"the dissector {path} is missing from the mpsim package: reinstall mpsim")
    return path


def tshark_lua_plugin_dir(tshark: str = "tshark") -> Path | None:
    """The "Personal Lua Plugins" folder ``tshark -G folders`` names, or None without tshark."""
    executable = shutil.which(tshark)
    if executable is None:
        return None
    try:
        out = subprocess.run([executable, "-G", "folders"], capture_output=True, text=True,
                             timeout=TSHARK_QUERY_TIMEOUT_S, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        label, _, value = line.partition(":")
        if label.strip() == "Personal Lua Plugins" and value.strip():
            return Path(value.strip())
    return None


def default_plugin_dir(environ: dict[str, str] | None = None, platform: str = sys.platform) -> Path:
    """Wireshark's default personal Lua plugin folder on ``platform`` (without asking tshark)."""
    environ = os.environ if environ is None else environ
    if platform.startswith("win"):
        appdata = environ.get("APPDATA")
        if not appdata:
            raise WiresharkInstallError("APPDATA is not set: give the plugin folder with --dir")
        return Path(appdata) / "Wireshark" / "plugins"
    home = environ.get("HOME")
    if not home:
        raise WiresharkInstallError("HOME is not set: give the plugin folder with --dir")
    return Path(home) / ".local" / "lib" / "wireshark" / "plugins"


def personal_plugin_dir() -> Path:
    """Where :func:`install` puts the dissector by default: tshark's answer, else the default."""
    return tshark_lua_plugin_dir() or default_plugin_dir()


def install(directory: Path | None = None) -> Path:
    """Copy ``mpsim.lua`` into ``directory`` (default :func:`personal_plugin_dir`), creating it;
    returns the installed file's path. An existing copy is replaced."""
    source = bundled_dissector_path()
    directory = personal_plugin_dir() if directory is None else Path(directory)
    if directory.exists() and not directory.is_dir():
        raise WiresharkInstallError(f"plugin folder {directory} exists and is not a folder")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / DISSECTOR_FILE_NAME
        shutil.copyfile(source, target)
    except OSError as err:
        raise WiresharkInstallError(f"cannot install the dissector into {directory}: {err.strerror or err}") from None
    return target
