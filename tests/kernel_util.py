"""Run notebooks in a real ipykernel (nbclient) and read their outputs."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent


def execute(nb: nbformat.NotebookNode, cwd: Path, timeout: int = 240) -> nbformat.NotebookNode:
    """Execute every cell top to bottom in a fresh python3 kernel; raise on an error cell."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=False,
                            resources={"metadata": {"path": str(cwd)}}, shutdown_kernel="graceful")
    client.execute(env=env)  # jupyter_client runs the kernel with this venv's python
    return nb


def code_cell(source: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_code_cell(source)


def notebook(*sources: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [code_cell(source) for source in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def outputs(cell: nbformat.NotebookNode, mime: str) -> list[str]:
    """Every ``mime`` payload a cell produced (display data and results)."""
    found = []
    for output in cell.get("outputs", []):
        if output.get("output_type") in ("display_data", "execute_result") and mime in output["data"]:
            found.append(output["data"][mime])
    return found
