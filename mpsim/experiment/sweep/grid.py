"""The grid of a sweep: ``--grid KEY=V1,V2`` and ``KEY=START:STOP:STEP`` to axes of values
(the grammar is in the package doc, :mod:`mpsim.experiment.sweep`)."""

from __future__ import annotations

import decimal
import itertools
import json
import re
from dataclasses import dataclass
from typing import Any

from mpsim.errors import MpsimError
from mpsim.experiment import scenario

#: The longest range or value list one --grid may give (a typo such as 0:1e6:1 should not plan for hours).
MAX_AXIS_VALUES = 100_000


class SweepError(MpsimError):
    """A sweep that cannot start or go on, for a reason the user can fix: printed as one line."""


@dataclass(frozen=True)
class GridAxis:
    """One ``--grid KEY=...``: the key, each value as text (what --set gets) and as the tables show it."""

    key: str
    texts: tuple[str, ...]
    values: tuple[Any, ...]  # bool, int, float or str per value: a column of the result tables


_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_RANGE = re.compile(rf"\s*({_NUMBER})\s*:\s*({_NUMBER})\s*:\s*({_NUMBER})\s*")
_INTEGER = re.compile(r"[+-]?\d+")


def split_values(text: str) -> list[str]:
    """``a,b,[c, d],{x = 1, y = 2},"e,f"`` to its top-level items: commas inside brackets, braces
    and quotes belong to the value (TOML lists, inline tables, strings)."""
    items, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote and text[i - 1] != "\\":
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i].strip())
            start = i + 1
    items.append(text[start:].strip())
    return items


def expand_range(text: str) -> list[str] | None:
    """``START:STOP:STEP`` to its values as text (see the module doc), or None if ``text`` is not one."""
    match = _RANGE.fullmatch(text)
    if match is None:
        return None
    start, stop, step = (decimal.Decimal(part) for part in match.groups())
    integers = all(_INTEGER.fullmatch(part) for part in match.groups())
    if step == 0:
        raise SweepError(f"range {text.strip()}: STEP must not be 0")
    if (stop - start) * step < 0:
        raise SweepError(f"range {text.strip()}: no values (a STEP of {match.group(3)} never goes from "
                         f"{match.group(1)} to {match.group(2)})")
    count = int((stop - start) / step) + 1  # counted before any value is made: 0:1e12:1 is refused at once
    if count > MAX_AXIS_VALUES:
        raise SweepError(f"range {text.strip()}: {count} values, more than {MAX_AXIS_VALUES} (the most one --grid "
                         "may give); use a bigger STEP or split the sweep")
    out = []
    for i in itertools.count():
        value = start + i * step  # exact in decimal: no error accumulates over the steps
        if (value - stop) * step > 0:
            break
        if len(out) == MAX_AXIS_VALUES:
            raise SweepError(f"range {text.strip()}: more than {MAX_AXIS_VALUES} values")
        out.append(str(int(value)) if integers else repr(float(value)))
    return out


def parse_grid(text: str) -> GridAxis:
    """One ``--grid KEY=V1,V2,...`` (items may be ``START:STOP:STEP`` ranges) to its axis."""
    key, eq, raw = text.partition("=")
    key = key.strip()
    if not eq or not key or not raw.strip():
        raise SweepError(f"--grid {text}: expected KEY=V1,V2,... or KEY=START:STOP:STEP, "
                         "e.g. --grid paths.dsl.delay_s=0.01,0.02")
    texts: list[str] = []
    for item in split_values(raw):
        if not item:
            raise SweepError(f"--grid {text}: an empty value (two commas, or one at an end)")
        texts.extend(expand_range(item) or [item])
    if len(texts) > MAX_AXIS_VALUES:
        raise SweepError(f"--grid {key}: more than {MAX_AXIS_VALUES} values")
    parsed = []
    for t in texts:
        try:
            parsed.append(scenario.parse_override(f"{key}={t}")[1])  # exactly as --set reads them
        except scenario.ScenarioError as err:
            raise SweepError(f"--grid {key}={t}: {err.message}") from None
    seen: dict[str, str] = {}
    for t, value in zip(texts, parsed):
        canonical = json.dumps(value, sort_keys=True)
        if canonical in seen:
            raise SweepError(f"--grid {key}: the value {t} is given twice"
                             + (f" (as {seen[canonical]} too)" if seen[canonical] != t else ""))
        seen[canonical] = t
    return GridAxis(key, tuple(texts), tuple(_column_values(texts, parsed)))


def _column_values(texts: list[str], parsed: list[Any]) -> list[Any]:
    """The values as a table column holds them: one type per column (numbers as floats if any is
    one), and the text as written for lists, tables and mixed types."""
    kinds = {bool if isinstance(v, bool) else (int, float) if isinstance(v, (int, float)) else type(v)
             for v in parsed}
    if kinds == {(int, float)}:
        return [float(v) for v in parsed] if any(isinstance(v, float) for v in parsed) else parsed
    if len(kinds) == 1 and kinds <= {bool, str}:
        return parsed
    return list(texts)
