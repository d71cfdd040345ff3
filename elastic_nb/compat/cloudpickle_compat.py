"""cloudpickle's private names: a pickler that keeps code objects' file names.

cloudpickle >= 3.1 renames every by-value code object's file to
``<dynamic-code>`` (for deterministic pickles), so a worker's traceback
cannot find the notebook's lines. ``SourceKeepingPickler`` reduces code
objects as cloudpickle does, then puts the real file name back.
"""

from __future__ import annotations

import copyreg
import types
from collections import ChainMap

import cloudpickle
import cloudpickle.cloudpickle as _impl

PRIVATE_NAMES = {
    "cloudpickle.cloudpickle._code_reduce": "how cloudpickle reduces a code object by value",
    "cloudpickle.Pickler._dispatch_table": "cloudpickle's reducers, beneath ours",
}


def _reduce_code_keeping_filename(code: types.CodeType) -> tuple:
    constructor, args = _impl._code_reduce(code)
    return constructor, tuple(code.co_filename if a == "<dynamic-code>" else a for a in args)


class SourceKeepingPickler(cloudpickle.Pickler):
    """cloudpickle's pickler, but code objects keep their file names (notebook cells)."""

    dispatch_table = ChainMap(
        {types.CodeType: _reduce_code_keeping_filename},
        cloudpickle.Pickler._dispatch_table,
        copyreg.dispatch_table,
    )
