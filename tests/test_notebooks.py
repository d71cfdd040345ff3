"""The course notebooks run top to bottom in a real kernel, with no error cell.

Each notebook asserts what it teaches (results, restart events, tracebacks,
stacks, a debugger session), so executing it is a test of those claims, not
only of "it ran". A notebook whose cells read ``input()`` lists the answers
in its metadata (``elastic_nb.stdin``) and runs through jupyter_client.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from kernel_util import ROOT, execute, execute_with_stdin, outputs

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
WIDGET = "application/vnd.jupyter.widget-view+json"


def test_the_course_is_there():
    assert {"01", "02", "03", "04", "05", "06", "07", "08", "09"} <= {p.name[:2] for p in NOTEBOOKS}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_shows_dashboards(path: Path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.get("outputs"), f"{path.name} is committed with outputs; clear them"
    answers = nb.metadata.get("elastic_nb", {}).get("stdin")
    if answers:  # a cell reads input() (job.debug): nbclient cannot answer it
        prompts = execute_with_stdin(nb, tmp_path, answers, timeout=300)
        assert prompts == ["(Pdb) "] * len(answers)
    else:
        execute(nb, tmp_path, timeout=300)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    dashboards = [c for c in nb.cells if c.cell_type == "code" and outputs(c, WIDGET)]
    assert dashboards, "every notebook shows at least one live dashboard"
    for cell in dashboards:
        assert outputs(cell, "text/html") and outputs(cell, "text/plain"), "non-widget fallbacks"
