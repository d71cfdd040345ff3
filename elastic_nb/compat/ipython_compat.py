"""IPython's private names: which notebook cell a code object's file is.

IPython compiles each cell to a file name of its own and keeps the mapping
to execution counts (``In[7]``) in ``shell.compile._filename_map``; a rank's
tile and pause location say "cell 7, line 4" from it.
"""

from __future__ import annotations

import sys

PRIVATE_NAMES = {
    "IPython shell.compile._filename_map": "cell file name -> execution count",
}


def cell_numbers() -> dict[str, int]:
    """IPython's cell files and their execution counts, when running in IPython."""
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    mapping = getattr(getattr(shell, "compile", None), "_filename_map", None)
    return {str(k): int(v) for k, v in mapping.items()} if isinstance(mapping, dict) else {}
