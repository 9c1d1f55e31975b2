"""The JSON form of wire values, derived from the dataclass type hints alone, and the text forms of bytes.

Every wire value class follows docs/wire-conventions.md, so one pair of functions serves all of
them: ``to_jsonable`` turns a value into plain JSON types (bytes as lowercase hex, addresses as
text, enums as integers, tagged unions as objects carrying their tag), and ``from_jsonable``
rebuilds a value of a given type, naming the exact path of anything it cannot use.

A value whose class has a ``name`` ClassVar is written with its tag: TCP options as
``{"kind": 2, "name": "mss", ...}``, Convert TLVs as ``{"type": "connect", ...}``. Reading picks
the class of a tagged object by that tag (from :func:`wire_registry` unless told otherwise), so a
union of a dozen option classes needs no hints.

A few classes also show a read-only property that the wire carries as a field (the Convert
header's Total Length): it is written in wire order, optional on reading, and when present it
must equal the value the other fields give.

For bytes as users paste them (Wireshark hex streams, spaced or colon-separated bytes, ``0x``
prefixes, hex dumps with offsets) there is :func:`hex_to_bytes`; :func:`hex_dump` writes the
Wireshark "Copy as Hex Dump" layout, which :func:`hex_to_bytes` reads back.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import ipaddress
import json
import re
import types
import typing
from typing import Any

from mpsim.errors import MpsimError


class JsonFormError(MpsimError):
    """JSON that does not describe a valid wire value; ``path`` says where (e.g. ``tlvs[1].port``)."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path or '(top level)'}: {message}")


# JSON keys in wire order for classes that show read-only properties, as (JSON key, attribute).
# A key whose attribute is not a field is derived: written out, and checked when read back.
# Fields missing from a layout are written after it, so a layout can never drop one.
_LAYOUTS: dict[str, tuple[tuple[str, str], ...]] = {
    # RFC 8803 section 6.1, Figure 13: Version, Total Length (32-bit words, header included), TLVs.
    "mpsim.wire.convert.ConvertMessage": (("version", "version"), ("total_length", "total_length_words"),
                                          ("tlvs", "tlvs")),
}


def _layout(cls: type) -> tuple[tuple[str, str], ...]:
    listed = _LAYOUTS.get(f"{cls.__module__}.{cls.__qualname__}", ())
    attributes = {attribute for _, attribute in listed}
    return listed + tuple((f.name, f.name) for f in dataclasses.fields(cls) if f.name not in attributes)


def _tag_field(cls: type) -> str | None:
    """Which JSON key carries a class's tag: TLVs use ``type`` (RFC 8803 wording), options ``name``."""
    if "name" not in _class_vars(cls):
        return None
    return "type" if "tlv_type" in _class_vars(cls) else "name"


def _class_vars(cls: type) -> set[str]:
    return {k for klass in cls.__mro__ for k, v in vars(klass).items() if not k.startswith("_") and not callable(v)}


def to_jsonable(value: Any) -> Any:
    """A JSON-ready structure (dicts, lists, str, int, bool, None) for any wire value."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        cls = type(value)
        tag = _tag_field(cls)
        if tag == "type":
            out["type"] = cls.name
        elif tag == "name":
            if hasattr(cls, "kind"):
                out["kind"] = int(getattr(value, "kind"))
            out["name"] = cls.name
        for key, attribute in _layout(cls):
            out[key] = to_jsonable(getattr(value, attribute))
        return out
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, enum.Enum):
        return int(value.value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [to_jsonable(item) for item in value]
    raise TypeError(f"no JSON form for {type(value).__name__}")


def format_json(data: Any, width_chars: int = 100, _indent: int = 0) -> str:
    """JSON text for people: an object or list on one line when it fits in ``width_chars``, else
    one member per line (``json.dumps(indent=2)`` would give every option field a line of its own)."""
    flat = json.dumps(data)
    if _indent + len(flat) <= width_chars or not isinstance(data, (dict, list)) or not data:
        return flat
    inner = " " * (_indent + 2)
    if isinstance(data, dict):
        members = [f"{inner}{json.dumps(k)}: {format_json(v, width_chars, _indent + 2)}" for k, v in data.items()]
        return "{\n" + ",\n".join(members) + "\n" + " " * _indent + "}"
    members = [f"{inner}{format_json(v, width_chars, _indent + 2)}" for v in data]
    return "[\n" + ",\n".join(members) + "\n" + " " * _indent + "]"


def tagged_classes(*modules: types.ModuleType) -> dict[str, type]:
    """The registry for reading tagged objects: every dataclass with a ``name`` ClassVar.

    Raises ValueError when two different classes claim one name: reading could not tell them apart.
    """
    registry: dict[str, type] = {}
    for module in modules:
        for obj in vars(module).values():
            if isinstance(obj, type) and dataclasses.is_dataclass(obj) and "name" in vars(obj):
                known = registry.setdefault(obj.name, obj)
                if known is not obj:
                    raise ValueError(
                        f"wire name {obj.name!r} is used by both {known.__qualname__} and {obj.__qualname__}"
                    )
    return registry


@functools.cache
def wire_registry() -> dict[str, type]:
    """Every tagged class of the wire layer: TCP and MPTCP options, MP_CONVERT, Convert TLVs, SOCKS5.

    Imported here, not at module level, so that a codec may one day use this module without a cycle.
    """
    from mpsim.wire import convert, mp_convert, mptcp, options, socks5

    return tagged_classes(options, mptcp, mp_convert, convert, socks5)


# --- bytes as text ------------------------------------------------------------------------------

# A prefix to drop: "0x" not inside a hex group (so "c0x" stays an error), or a C escape "\x".
_PREFIX = re.compile(r"\\x|(?<![0-9a-fA-F])0[xX]")
_SEPARATOR = re.compile(r"[:,;\-]")
_NOT_HEX = re.compile(r"[^0-9a-fA-F]")
# A dump line: an offset of 4-8 hex digits ("0000", "00000010", "0x0010:"), set off by a colon and
# a space or by two spaces, so that hex groups such as "0000 1c46" or "0000:1c46" stay hex groups.
_DUMP_LINE = re.compile(r"\s*(?:0x)?([0-9a-fA-F]{4,8})(?:(?::\s+|\s{2,})(.*))?")


def hex_to_bytes(text: str, path: str = "") -> bytes:
    """Bytes from hex as users paste it.

    Accepted: a hex stream (``4500003c``), bytes or groups set off by spaces, newlines, colons,
    commas or dashes (``45 00``, ``45:00``, ``4500 003c``), ``0x`` and ``\\x`` prefixes, and hex
    dumps with offsets and an optional ASCII column (Wireshark "Copy as Hex Dump", ``hexdump -C``,
    ``xxd``, ``tcpdump -xx`` and ``-X``). Each group must have an even number of digits, so that a
    dropped digit is reported rather than shifting every later byte. Errors name the character
    position (counted from 1).
    """
    dumped = _hex_dump_bytes(text)
    if dumped is not None:
        return dumped
    # Same-length replacements keep the positions of the original text for the messages.
    cleaned = _SEPARATOR.sub(" ", _PREFIX.sub(lambda m: " " * len(m.group()), text))
    out = bytearray()
    for match in re.finditer(r"\S+", cleaned):
        group = match.group()
        bad = _NOT_HEX.search(group)
        if bad:
            position = match.start() + bad.start() + 1
            raise JsonFormError(path, f"not a hex digit: {bad.group()!r} at character {position}")
        if len(group) % 2:
            raise JsonFormError(
                path, f"hex group {group!r} at character {match.start() + 1} has an odd number of digits ({len(group)})"
            )
        out += bytes.fromhex(group)
    return bytes(out)


def _hex_dump_bytes(text: str) -> bytes | None:
    """The bytes of a hex dump with offsets, or None when ``text`` is not one.

    A dump's first offset is 0 and each further offset counts the bytes before it, which no
    plain hex stream satisfies by accident; an offset-only last line (``hexdump -C``) is allowed.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    out = bytearray()
    for number, line in enumerate(lines):
        match = _DUMP_LINE.fullmatch(line.rstrip())
        if match is None or int(match.group(1), 16) != len(out):
            return None
        if match.group(2) is None:  # an offset alone: only the final length, after some bytes
            if not out or number != len(lines) - 1:
                return None
            continue
        line_bytes = _dump_line_bytes(match.group(2))
        if line_bytes is None:
            return None
        out += line_bytes
    return bytes(out) if out else None


def _dump_line_bytes(rest: str) -> bytes | None:
    """The bytes of one dump line after its offset: hex groups, then maybe the ASCII column.

    The ASCII column is told from hex by being the rendering of the bytes before it (an ASCII
    column such as ``ab`` is valid hex too); a line that is all hex groups has no ASCII column.
    """
    data = bytearray()
    for match in re.finditer(r"\S+", rest):
        group = match.group()
        if _NOT_HEX.search(group) or len(group) % 2:
            break
        data += bytes.fromhex(group)
        remainder, column = rest[match.end():].strip(), _ascii_column(data)
        if remainder in ("", column.strip(), f"|{column}|"):  # none, Wireshark / tcpdump, hexdump -C
            return bytes(data)
    return None


def _ascii_column(data: bytes) -> str:
    """Printable ASCII as itself, everything else as a dot, as every hex dump tool writes it."""
    return "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in data)


def hex_dump(data: bytes, width_bytes: int = 16) -> str:
    """``data`` as Wireshark's "Copy as Hex Dump" writes it: offset, hex bytes, ASCII column.

    :func:`hex_to_bytes` reads it back, so a dump can be pasted into ``mpsim wire decode``.
    """
    lines = []
    for start in range(0, len(data), width_bytes):
        chunk = data[start : start + width_bytes]
        hex_part = " ".join(f"{b:02x}" for b in chunk).ljust(3 * width_bytes - 1)
        lines.append(f"{start:04x}   {hex_part}   {_ascii_column(chunk)}")
    return "\n".join(lines)


# --- reading ------------------------------------------------------------------------------------


def from_jsonable(hint: Any, data: Any, registry: dict[str, type] | None = None, path: str = "") -> Any:
    """A value of type ``hint`` built from ``data``; JsonFormError names the path of any problem.

    ``registry`` maps tags to classes (default: :func:`wire_registry`).
    """
    if registry is None:
        registry = wire_registry()
    origin = typing.get_origin(hint)
    if hint is Any or hint is object:
        return _from_tagged(data, registry, path) if isinstance(data, dict) else data
    if origin in (typing.Union, types.UnionType):
        return _from_union(typing.get_args(hint), data, registry, path)
    if hint is type(None):
        if data is not None:
            raise JsonFormError(path, f"expected null, got {data!r}")
        return None
    if origin is tuple or hint is tuple:
        if not isinstance(data, list):
            raise JsonFormError(path, f"expected a list, got {_json_type(data)}")
        args = typing.get_args(hint)
        if not args:
            item_hints = [Any] * len(data)
        elif len(args) == 2 and args[1] is Ellipsis:
            item_hints = [args[0]] * len(data)
        else:
            if len(args) != len(data):
                raise JsonFormError(path, f"expected a list of {len(args)} items, got {len(data)}")
            item_hints = list(args)
        return tuple(
            from_jsonable(h, item, registry, f"{path}[{i}]") for i, (h, item) in enumerate(zip(item_hints, data))
        )
    if isinstance(hint, type):
        if dataclasses.is_dataclass(hint):
            if _tag_field(hint) and isinstance(data, dict) and ("name" in data or "type" in data):
                return _from_tagged(data, registry, path, allowed=[hint])  # a tag, if given, must fit
            return _from_dataclass(hint, data, registry, path)
        if issubclass(hint, bool):
            if not isinstance(data, bool):
                raise JsonFormError(path, f"expected true or false, got {data!r}")
            return data
        if issubclass(hint, enum.Enum):
            if isinstance(data, bool) or not isinstance(data, int):
                raise JsonFormError(path, f"expected an integer code for {hint.__name__}, got {data!r}")
            try:
                return hint(data)
            except ValueError:
                raise JsonFormError(path, f"{data} is not a valid {hint.__name__}") from None
        if issubclass(hint, int):
            if isinstance(data, bool) or not isinstance(data, int):
                raise JsonFormError(path, f"expected an integer, got {data!r}")
            return data
        if issubclass(hint, str):
            if not isinstance(data, str):
                raise JsonFormError(path, f"expected a string, got {data!r}")
            return data
        if issubclass(hint, bytes):
            if not isinstance(data, str):
                raise JsonFormError(path, f"expected a hex string, got {data!r}")
            return hex_to_bytes(data, path)
        if issubclass(hint, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            address = _address(data, path)
            if not isinstance(address, hint):
                raise JsonFormError(path, f"expected an {hint.__name__}, got {data!r}")
            return address
    raise JsonFormError(path, f"cannot read a value of type {hint!r}")


def _json_type(data: Any) -> str:
    """The JSON name of a parsed value's type, for messages addressed to someone writing JSON."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}
    return names.get(type(data), "a number")


def _address(data: Any, path: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if not isinstance(data, str):
        raise JsonFormError(path, f"expected an IP address as text, got {data!r}")
    try:
        return ipaddress.ip_address(data)
    except ValueError:
        raise JsonFormError(path, f"{data!r} is not an IPv4 or IPv6 address") from None


def _from_union(members: tuple, data: Any, registry: dict[str, type], path: str) -> Any:
    if data is None:
        if type(None) in members:
            return None
        raise JsonFormError(path, "null is not allowed here")
    concrete = [m for m in members if m is not type(None)]
    if len(concrete) == 1:  # an optional field: the one member's own message is the useful one
        return from_jsonable(concrete[0], data, registry, path)
    if all(isinstance(m, type) and issubclass(m, (ipaddress.IPv4Address, ipaddress.IPv6Address)) for m in concrete):
        return _address(data, path)
    if isinstance(data, dict) and any(isinstance(m, type) and dataclasses.is_dataclass(m) for m in concrete):
        return _from_tagged(data, registry, path, allowed=concrete)
    if all(isinstance(m, type) and dataclasses.is_dataclass(m) for m in concrete):
        raise JsonFormError(path, f"expected an object, got {_json_type(data)}")
    # Members in declaration order: an address before str, so "192.0.2.1" is an address.
    for member in concrete:
        try:
            return from_jsonable(member, data, registry, path)
        except JsonFormError:
            continue
    forms = ", ".join(getattr(m, "__name__", str(m)) for m in concrete)
    raise JsonFormError(path, f"{data!r} is none of the allowed forms ({forms})")


def _from_tagged(data: dict, registry: dict[str, type], path: str, allowed: list | None = None) -> Any:
    tag = data.get("type") if isinstance(data.get("type"), str) else data.get("name")
    if not isinstance(tag, str):
        raise JsonFormError(
            path, 'object needs a "name" (TCP options, e.g. {"kind": 2, "name": "mss", "mss_bytes": 1460}) '
                  'or a "type" (Convert TLVs, e.g. {"type": "info"}) naming its form'
        )
    cls = registry.get(tag)
    fits = (lambda c: any(isinstance(m, type) and issubclass(c, m) for m in allowed)) if allowed else (lambda c: True)
    if cls is None or not fits(cls):
        expected = ", ".join(sorted(name for name, c in registry.items() if fits(c)))
        problem = "is not a known form" if cls is None else "is not allowed here"
        raise JsonFormError(path, f"{tag!r} {problem}; expected one of: {expected}")
    return _from_dataclass(cls, data, registry, path)


def _from_dataclass(cls: type, data: Any, registry: dict[str, type], path: str) -> Any:
    label = getattr(cls, "name", cls.__name__)
    if not isinstance(data, dict):
        raise JsonFormError(path, f"expected an object for {label}, got {_json_type(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    derived = {key: attribute for key, attribute in _layout(cls) if attribute not in fields}
    tag_keys = {"name", "type"} if _tag_field(cls) else set()
    if _tag_field(cls) == "name" and "kind" not in fields:
        tag_keys.add("kind")
    unknown = set(data) - set(fields) - tag_keys - set(derived)
    if unknown:
        raise JsonFormError(path, f"unknown field(s) {sorted(unknown)} for {label}; expected {sorted(fields)}")
    if "kind" in data and "kind" not in fields and hasattr(cls, "kind") and data["kind"] != cls.kind:
        raise JsonFormError(_join(path, "kind"), f"{cls.name} has kind {int(cls.kind)}, not {data['kind']!r}")
    kwargs = {}
    for name, field in fields.items():
        if not field.init:
            continue
        if name in data:
            kwargs[name] = from_jsonable(hints[name], data[name], registry, _join(path, name))
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise JsonFormError(path, f"missing field {name!r} for {label}")
    try:
        value = cls(**kwargs)
    except MpsimError as err:
        raise JsonFormError(path, str(err)) from None
    for key, attribute in derived.items():
        computed = to_jsonable(getattr(value, attribute))
        if key in data and (data[key] != computed or type(data[key]) is not type(computed)):
            raise JsonFormError(
                _join(path, key), f"{data[key]!r} does not match {computed!r}, the value the other fields give"
            )
    return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
