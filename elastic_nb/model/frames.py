"""How a frame is named for a person: a notebook cell as ``cell N, line M``, a file by its name.

IPython compiles each cell to a file of its own (``/tmp/ipykernel_1/3376146183.py``);
a stack that shows that name tells the reader nothing. Every view that
shows a frame (the hang map's sentence and its grouped stacks, ``job.stacks()``
and the dashboard's stacks tab) names it the same way, from the kernel's map
of cell files to execution counts.
"""

from __future__ import annotations

import os
import re

_FAULTHANDLER_FRAME = re.compile(r'^(\s*)File "([^"]+)", line (\d+)', re.MULTILINE)


def frame_name(filename: str, line: int, cell: int | None) -> str:
    return f"cell {cell}, line {line}" if cell is not None else f"{os.path.basename(filename)}:{line}"


def name_cells(stack_text: str, cells: dict[str, int]) -> str:
    """A faulthandler dump with each notebook cell's frame named ``cell N, line M``."""
    def rename(match: re.Match[str]) -> str:
        indent, filename, line = match.groups()
        cell = cells.get(filename)
        return match.group(0) if cell is None else f"{indent}cell {cell}, line {line}"

    return _FAULTHANDLER_FRAME.sub(rename, stack_text)
