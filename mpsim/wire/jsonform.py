"""The JSON form of wire values, derived from the dataclass type hints alone.

Every wire value class follows docs/wire-conventions.md, so one pair of functions serves all of
them: ``to_jsonable`` turns a value into plain JSON types (bytes as lowercase hex, addresses as
text, enums as integers, tagged unions as objects carrying their tag), and ``from_jsonable``
rebuilds a value of a given type, naming the exact path of anything it cannot use.

A value whose class has a ``name`` ClassVar is written with its tag: TCP options as
``{"kind": 2, "name": "mss", ...}``, Convert TLVs as ``{"type": "connect", ...}``. Reading picks
the class of a tagged object by that tag, so a union of a dozen option classes needs no hints.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import types
import typing
from typing import Any

from mpsim.errors import MpsimError


class JsonFormError(MpsimError):
    """JSON that does not describe a valid wire value; ``path`` says where (e.g. ``tlvs[1].port``)."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(f"{path or '(top level)'}: {message}")


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
        for field in dataclasses.fields(value):
            out[field.name] = to_jsonable(getattr(value, field.name))
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


def tagged_classes(*modules: types.ModuleType) -> dict[str, type]:
    """The registry for reading tagged objects: every dataclass with a ``name`` ClassVar."""
    registry: dict[str, type] = {}
    for module in modules:
        for obj in vars(module).values():
            if isinstance(obj, type) and dataclasses.is_dataclass(obj) and "name" in vars(obj):
                registry[obj.name] = obj
    return registry


def hex_to_bytes(text: str, path: str = "") -> bytes:
    """Bytes from hex as users paste it: spaces, colons, newlines and ``0x`` prefixes allowed."""
    cleaned = text.replace("0x", " ").replace("0X", " ")
    for sep in ":,-\n\t\r":
        cleaned = cleaned.replace(sep, " ")
    digits = "".join(cleaned.split())
    if len(digits) % 2:
        raise JsonFormError(path, f"hex string has an odd number of digits ({len(digits)})")
    try:
        return bytes.fromhex(digits)
    except ValueError:
        bad = next(ch for ch in digits if ch not in "0123456789abcdefABCDEF")
        raise JsonFormError(path, f"not a hex digit: {bad!r}") from None


def from_jsonable(hint: Any, data: Any, registry: dict[str, type], path: str = "") -> Any:
    """A value of type ``hint`` built from ``data``; JsonFormError names the path of any problem."""
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
            raise JsonFormError(path, f"expected a list, got {type(data).__name__}")
        args = typing.get_args(hint)
        if not args:
            item_hints = [Any] * len(data)
        elif len(args) == 2 and args[1] is Ellipsis:
            item_hints = [args[0]] * len(data)
        else:
            if len(args) != len(data):
                raise JsonFormError(path, f"expected a list of {len(args)} items, got {len(data)}")
            item_hints = list(args)
        return tuple(from_jsonable(h, item, registry, f"{path}[{i}]") for i, (h, item) in enumerate(zip(item_hints, data)))
    if isinstance(hint, type):
        if dataclasses.is_dataclass(hint):
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
    if all(isinstance(m, type) and issubclass(m, (ipaddress.IPv4Address, ipaddress.IPv6Address)) for m in concrete):
        return _address(data, path)
    if isinstance(data, dict) and any(isinstance(m, type) and dataclasses.is_dataclass(m) for m in concrete):
        return _from_tagged(data, registry, path, allowed=concrete)
    errors = []
    for member in concrete:
        try:
            return from_jsonable(member, data, registry, path)
        except JsonFormError as err:
            errors.append(str(err))
    raise JsonFormError(path, f"{data!r} matches none of the allowed forms")


def _from_tagged(data: dict, registry: dict[str, type], path: str, allowed: list | None = None) -> Any:
    tag = data.get("type") if "type" in data and isinstance(data.get("type"), str) else data.get("name")
    if not isinstance(tag, str):
        raise JsonFormError(path, "object needs a \"name\" (options) or \"type\" (TLVs) naming its form")
    cls = registry.get(tag)
    if cls is None:
        raise JsonFormError(path, f"unknown form {tag!r}; known: {', '.join(sorted(registry))}")
    if allowed is not None and not any(isinstance(m, type) and issubclass(cls, m) for m in allowed):
        raise JsonFormError(path, f"{tag!r} is not allowed here")
    return _from_dataclass(cls, data, registry, path)


def _from_dataclass(cls: type, data: Any, registry: dict[str, type], path: str) -> Any:
    if not isinstance(data, dict):
        raise JsonFormError(path, f"expected an object for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    tag_keys = {"name", "type"} if _tag_field(cls) else set()
    if _tag_field(cls) == "name" and "kind" not in fields:
        tag_keys.add("kind")
    unknown = set(data) - set(fields) - tag_keys
    if unknown:
        raise JsonFormError(path, f"unknown field(s) {sorted(unknown)} for {getattr(cls, 'name', cls.__name__)}; "
                                  f"expected {sorted(fields)}")
    if "kind" in data and "kind" not in fields and hasattr(cls, "kind") and data["kind"] != cls.kind:
        raise JsonFormError(f"{path}.kind", f"{cls.name} has kind {int(cls.kind)}, not {data['kind']!r}")
    kwargs = {}
    for name, field in fields.items():
        if not field.init:
            continue
        if name in data:
            kwargs[name] = from_jsonable(hints[name], data[name], registry, f"{path}.{name}" if path else name)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise JsonFormError(path, f"missing field {name!r} for {getattr(cls, 'name', cls.__name__)}")
    try:
        return cls(**kwargs)
    except MpsimError as err:
        raise JsonFormError(path, str(err)) from None
