"""Running a script or a module as ``__main__`` on a rank, as torchrun's worker would.

torchrun starts ``python -u train.py ARGS`` (or ``python -u -m pkg.train ARGS``)
on each rank; here the rank's trampoline runs the same file in its own
process with ``runpy``, so every control the trampoline arms (stacks, the
hang map, ``breakpoint()``, post-mortem, collective timeouts) covers it.
``sys.argv`` is what Python gives such a process: ``[path as given, *ARGS]``
for a script, ``[the module's file, *ARGS]`` for a module (runpy sets it);
``sys.path`` starts with the script's directory, or the working directory
for a module. A rank whose working directory does not hold the script (a
node started elsewhere) runs it by the absolute path the kernel resolved,
which is then its ``argv[0]``, as ``python /abs/train.py`` would make it.
``sys.exit(0)``/``sys.exit()`` is a clean exit (the rank's result is 0); a
non-zero code ends the process with that code.
"""

from __future__ import annotations

import os
import runpy
import sys

from elastic_nb.wire.entrypoints import ScriptCall


def run(call: ScriptCall) -> int:
    """Run ``call`` as ``__main__``; 0 when it ends or exits cleanly, else SystemExit goes on."""
    path = call.target if call.module or os.path.exists(call.target) else call.resolved
    sys.argv = [call.target, *call.args]  # runpy puts the file it runs in argv[0]
    sys.path.insert(0, os.getcwd() if call.module else os.path.dirname(os.path.abspath(path)))
    try:
        if call.module:
            runpy.run_module(call.target, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(path, run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    return 0
