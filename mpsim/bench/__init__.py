"""Benchmark machinery behind ``benchmarks/`` and ``mpsim bench``: functions that measure and
return results (dicts and DataFrames) and a ``main(argv)`` per benchmark, so an installed mpsim
can run them too (e.g. :mod:`mpsim.bench.simulator`: simulator speed beside bare SimPy and ns.py).
"""

import json
from pathlib import Path
from typing import Any


def write_json_and_markdown(results: dict[str, Any], markdown_text: str, out_dir: Path,
                            stem: str) -> tuple[Path, Path]:
    """``out_dir/stem.json`` (everything, for tools) and ``out_dir/stem.md`` (the table people read)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    md_path.write_text(markdown_text)
    return json_path, md_path
