"""Checking a script or module entrypoint before any process starts.

``launch("train.py", "--lr", "0.1")`` runs a script file, ``launch("pkg.train",
..., module=True)`` a module, as torchrun does (``wire.entrypoints``). The
file must be there (resolved as the ranks resolve it: against this kernel's
working directory, which every local rank takes on), the module findable on
the ranks' path (the working directory, then this kernel's ``sys.path``),
and the arguments strings, as on a command line; a mistake is a
``LaunchError`` that names the fix. The module is looked up without
importing anything in the kernel.
"""

from __future__ import annotations

import os
import sys
from importlib.machinery import PathFinder
from typing import Any

from elastic_nb.model.errors import LaunchError
from elastic_nb.wire.entrypoints import ScriptCall


def script_call(target: str, args: tuple, kwargs: dict[str, Any], module: bool,
                what: str = "fn") -> ScriptCall:
    """The checked ``ScriptCall`` of ``target`` (a path, or a module name with ``module``)."""
    example = f"launch({target!r}, '--lr', '0.1', nproc=2)"
    if kwargs:
        raise LaunchError(f"a script takes command-line arguments, not keywords "
                          f"({', '.join(sorted(kwargs))}=...): pass them as strings after its "
                          f"path, e.g. {example}")
    for index, arg in enumerate(args):
        if not isinstance(arg, str):
            raise LaunchError(f"argument {index} of {target!r} is a {type(arg).__name__}; a "
                              f"script's arguments are strings, as on a command line: write "
                              f"{str(arg)!r}")
    if module:
        _check_module(target, what)
        return ScriptCall(target, tuple(args), module=True)
    _check_script(target, what)
    return ScriptCall(target, tuple(args), resolved=os.path.abspath(target))


def _check_script(path: str, what: str) -> None:
    if not path:
        raise LaunchError(f"{what} is an empty string: give a function, a script's path or, "
                          "with module=True, a module's name")
    if os.path.isfile(path) or os.path.isfile(os.path.join(path, "__main__.py")):
        return
    hint = ""
    if not path.endswith(".py") and os.sep not in path and _find_module(path) is not None:
        hint = f"; {path!r} is a module: pass module=True (torchrun's -m) to run it"
    raise LaunchError(f"{what}: no script {path!r} in {os.getcwd()} (the ranks' working "
                      f"directory){hint}. Give the script's path, relative to that directory "
                      "or absolute")


def _check_module(name: str, what: str) -> None:
    if not all(part.isidentifier() for part in name.split(".")):
        raise LaunchError(f"{what}: {name!r} is not a module name (module=True runs a module "
                          "like 'pkg.train'; for a file, leave module=False)")
    spec = _find_module(name)
    if spec is None:
        raise LaunchError(f"{what}: no module {name!r} on the ranks' path (the working directory "
                          f"{os.getcwd()}, then sys.path): check its name, or add its directory "
                          "to sys.path (or PYTHONPATH) before launching")
    locations = spec.submodule_search_locations
    if locations is not None and PathFinder.find_spec(f"{name}.__main__", list(locations)) is None:
        raise LaunchError(f"{what}: {name!r} is a package without a __main__ module: name the "
                          f"module to run inside it (e.g. {name}.train)")


def _find_module(name: str) -> Any:
    """The spec of ``name`` on the ranks' path, found without importing its packages."""
    path: list[str] | None = [os.getcwd(), *(p for p in sys.path if p)]
    spec = None
    parts = name.split(".")
    for depth in range(len(parts)):
        if path is None:
            return None  # a module, not a package, cannot hold the next part
        spec = PathFinder.find_spec(".".join(parts[:depth + 1]), path)
        if spec is None:
            return None
        locations = spec.submodule_search_locations
        path = list(locations) if locations is not None else None
    return spec
