"""Packing what the workers run: a function call with the notebook's source lines, or a script.

``pack_call`` serializes the function, its arguments, the source lines of
the notebook cells it may run (linecache entries with no file behind them)
and IPython's cell numbers, so a worker's traceback and pause location
quote the notebook. ``pack_script`` packs a script or module to run as
``__main__`` (``wire.entrypoints``). The worker unpacks either
(``worker.trampoline``).
"""

from __future__ import annotations

import io
import linecache
import os
from collections.abc import Callable
from typing import Any

import cloudpickle

from elastic_nb.compat.cloudpickle_compat import SourceKeepingPickler
from elastic_nb.compat.ipython_compat import cell_numbers
from elastic_nb.wire.entrypoints import ScriptCall

_MAX_SOURCE_BYTES = 8 << 20


def interactive_sources() -> dict[str, list[str]]:
    """linecache entries with no file behind them: notebook cells, ``<stdin>``."""
    sources: dict[str, list[str]] = {}
    total = 0
    for filename, entry in list(linecache.cache.items()):
        if len(entry) != 4 or not entry[2] or os.path.exists(filename):
            continue
        total += sum(len(line) for line in entry[2])
        if total > _MAX_SOURCE_BYTES:
            break
        sources[filename] = list(entry[2])
    return sources


def pack_call(fn: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> bytes:
    """Serialize one function call for the workers (raises if it cannot)."""
    buffer = io.BytesIO()
    SourceKeepingPickler(buffer, protocol=cloudpickle.DEFAULT_PROTOCOL).dump(
        {"fn": fn, "args": args, "kwargs": kwargs, "sources": interactive_sources(),
         "cells": cell_numbers()}
    )
    return buffer.getvalue()


def pack_script(call: ScriptCall) -> bytes:
    """Serialize a script or module entrypoint for the workers (its lines are on disk)."""
    return cloudpickle.dumps({"script": call, "sources": {}, "cells": {}})
