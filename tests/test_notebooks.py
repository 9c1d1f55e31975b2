"""The notebooks run top to bottom in a fresh kernel, with their small parameters.

Each notebook's first code cell reads ``MPSIM_NOTEBOOK_QUICK``; set to 1 here, every notebook runs
in seconds. The kernel is this interpreter (``sys.executable``), declared in a kernelspec of
the test's own, so the notebooks run in the project's environment whatever kernels the machine
has registered, and in a fresh ``make test`` venv where none was registered by hand. A failing
cell is reported with the notebook's name, the cell's index, its first line and the error.

The notebooks are committed without outputs (small diffs); a test checks that too.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402  (after the skips)
from jupyter_client.manager import KernelManager  # noqa: E402
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError  # noqa: E402

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
KERNEL_NAME = "mpsim-notebook-test"
CELL_TIMEOUT_S = 180  # one cell, in quick mode (they take seconds)
STARTUP_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kernelspec directory holding one kernel: this interpreter running ipykernel."""
    root = tmp_path_factory.mktemp("kernels")
    spec = root / KERNEL_NAME
    spec.mkdir()
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "mpsim tests (this interpreter)",
        "language": "python",
    }))
    return root


def _first_line(cell) -> str:
    lines = [line for line in cell.source.splitlines() if line.strip()]
    return lines[0][:100] if lines else "(empty)"


def run_notebook(path: Path, kernel_dir: Path, *, env: dict[str, str] | None = None,
                 tags: set[str] | None = None):
    """Execute ``path`` (only the cells carrying one of ``tags``, when given) in a fresh kernel,
    with MPSIM_NOTEBOOK_QUICK=1 and ``env``; fail naming the notebook and the cell."""
    nb = nbformat.read(path, as_version=4)
    if tags is not None:
        nb.cells = [cell for cell in nb.cells if tags & set(cell.metadata.get("tags", []))]
    manager = KernelManager(kernel_name=KERNEL_NAME,
                            kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_dir)]))
    client = nbclient.NotebookClient(nb, km=manager, timeout=CELL_TIMEOUT_S, startup_timeout=STARTUP_TIMEOUT_S,
                                     resources={"metadata": {"path": str(NOTEBOOKS_DIR)}})
    kernel_env = {**os.environ, "MPSIM_NOTEBOOK_QUICK": "1", "MPLBACKEND": "module://matplotlib_inline.backend_inline",
                  **(env or {})}
    started = time.perf_counter()
    try:
        with client.setup_kernel(env=kernel_env):
            for index, cell in enumerate(nb.cells):
                if cell.cell_type != "code":
                    continue
                try:
                    client.execute_cell(cell, index)
                except (CellExecutionError, CellTimeoutError, DeadKernelError) as err:
                    pytest.fail(f"{path.name}: cell {index} ({_first_line(cell)!r}) failed after "
                                f"{time.perf_counter() - started:.1f} s:\n{err}", pytrace=False)
    finally:  # the client does not own a kernel manager it was given: stop the kernel here
        if manager.has_kernel:
            manager.shutdown_kernel(now=True)
    return nb, time.perf_counter() - started


def _outputs(nb) -> list[dict]:
    return [output for cell in nb.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]


def _texts(nb) -> str:
    parts = []
    for output in _outputs(nb):
        if output.get("output_type") == "stream":
            parts.append(output.get("text", ""))
        for kind in ("text/markdown", "text/plain"):
            parts.append(output.get("data", {}).get(kind, ""))
    return "\n".join(parts)


def test_the_notebooks_are_there() -> None:
    names = [path.name for path in NOTEBOOKS]
    assert names == ["01_signalling_schemes.ipynb", "02_cost_of_a_wrong_guess.ipynb", "03_caching_proxy_off.ipynb",
                     "04_tfo_and_conversion.ipynb", "05_throughput.ipynb"]
    readme = (NOTEBOOKS_DIR / "README.md").read_text(encoding="utf-8")
    for name in names:
        assert name in readme, f"notebooks/README.md does not mention {name}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_committed_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [index for index, cell in enumerate(nb.cells) if cell.cell_type == "code"
             and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not dirty, f"{path.name}: cells {dirty} hold outputs; clear them before committing"
    first = next(cell for cell in nb.cells if cell.cell_type == "code")
    assert "MPSIM_NOTEBOOK_QUICK" in first.source and "parameters" in first.metadata.get("tags", []), \
        f"{path.name}: the first code cell must be the parameters cell reading MPSIM_NOTEBOOK_QUICK"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_runs(path: Path, kernel_dir: Path) -> None:
    nb, elapsed = run_notebook(path, kernel_dir)
    outputs = _outputs(nb)
    errors = [output for output in outputs if output.get("output_type") == "error"]
    assert not errors, f"{path.name}: error outputs {errors}"
    assert any("image/png" in output.get("data", {}) for output in outputs), f"{path.name}: no figure"
    assert any("text/markdown" in output.get("data", {}) for output in outputs), \
        f"{path.name}: no computed answer (a Markdown output)"
    assert "QUICK=True" in _texts(nb), f"{path.name}: the kernel did not see MPSIM_NOTEBOOK_QUICK=1"
    print(f"{path.name}: {elapsed:.1f} s")


THROUGHPUT = NOTEBOOKS_DIR / "05_throughput.ipynb"


def test_kernel_comparison_without_results(kernel_dir: Path, tmp_path: Path) -> None:
    """No benchmark results: the notebook says how to get them and plots nothing in their place."""
    nb, _ = run_notebook(THROUGHPUT, kernel_dir, env={"MPSIM_KERNEL_MODEL_CSV": str(tmp_path / "absent.csv")},
                         tags={"parameters", "kernel"})
    text = _texts(nb)
    assert "No kernel comparison" in text and "mpsim bench kernel model" in text
    assert not any("image/png" in output.get("data", {}) for output in _outputs(nb))


def test_kernel_comparison_with_results(kernel_dir: Path, tmp_path: Path) -> None:
    """Results in the columns `mpsim bench kernel model` writes: predicted against measured, plotted."""
    csv = tmp_path / "kernel_model.csv"
    csv.write_text("kind,point,transfer,rate_mbps,loss_prob,rep,goodput_kernel_mbps,goodput_model_mbps\n"
                   "grid,\"10 Mbit/s, loss 0.0%\",\"MPTCP via converter, 2 paths\",10.0,0.0,0,18.0,18.9\n"
                   "grid,\"10 Mbit/s, loss 2.0%\",\"MPTCP via converter, 2 paths\",10.0,0.02,0,15.0,18.0\n"
                   "grid-tcp,\"10 Mbit/s, loss 0.0%\",\"TCP direct, path 0\",10.0,0.0,0,9.5,9.5\n")
    nb, _ = run_notebook(THROUGHPUT, kernel_dir, env={"MPSIM_KERNEL_MODEL_CSV": str(csv)},
                         tags={"parameters", "kernel"})
    text = _texts(nb)
    assert "Model against kernel" in text and "3 transfers" in text, text
    assert "+20.0%" in text  # the worst error: (18 - 15) / 15
    assert any("image/png" in output.get("data", {}) for output in _outputs(nb))
