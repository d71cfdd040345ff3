"""IPython magics: ``%elastic_run``, ``%%elastic_run`` and ``%torchrun``, thin over ``launch``.

Load them with ``%load_ext elastic_nb``. The line magic launches a function
of the notebook with arguments written as in a shell (each one a Python
expression evaluated in the notebook), or a script with its command-line
arguments; the cell magic runs the cell's body on every rank, with the
notebook names it uses captured by cloudpickle. Both show the job's
dashboard and return at once, or with ``--block`` return the results by
rank. ``%torchrun`` takes torchrun's own command line (``ui.torchrun`` maps
its flags).
"""

from __future__ import annotations

import ast
import builtins
import io
import linecache
import shlex
import tokenize
from typing import Any

import cloudpickle
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from elastic_nb.kernel.launch import launch
from elastic_nb.model.plan import Node
from elastic_nb.ui import torchrun as torchrun_line
from elastic_nb.wire.options import OPTIONS, Option

_CELL_FILENAME = "<%%elastic_run cell>"
_LAYOUT_TOKENS = frozenset({tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER, tokenize.INDENT,
                            tokenize.DEDENT})
_NOT_CAPTURED = frozenset({"In", "Out", "get_ipython", "exit", "quit", "display"})


def run_cell_body(source: str, names: dict[str, Any]) -> Any:
    """Run a cell's source on one rank; the value of its last expression is the result.

    Runs in the worker process. The source is registered with linecache so a
    traceback quotes the cell's lines.
    """
    linecache.cache[_CELL_FILENAME] = (len(source), None, source.splitlines(True), _CELL_FILENAME)
    namespace = {"__name__": "__main__", "__builtins__": builtins, **names}
    tree = ast.parse(source, _CELL_FILENAME)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, _CELL_FILENAME, "exec"), namespace)
    if not isinstance(last, ast.Expr):
        return None
    return eval(compile(ast.Expression(last.value), _CELL_FILENAME, "eval"), namespace)


def used_names(source: str) -> set[str]:
    """The global names a cell reads (assigned-only names are its own)."""
    tree = ast.parse(source)
    return {node.id for node in ast.walk(tree)
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}


def split_call(text: str) -> list[str]:
    """Split ``fn a [1, 2] key="x y"`` into Python expressions at top-level whitespace."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError) as exc:
        raise UsageError(f"cannot read the call {text!r}: {exc}") from None
    items: list[str] = []
    depth = 0
    last_end: int | None = None
    for token in tokens:
        if token.type in _LAYOUT_TOKENS:
            continue
        start, end = token.start[1], token.end[1]
        if last_end is None or (depth == 0 and start > last_end):
            items.append(token.string)
        else:
            items[-1] += text[last_end:start] + token.string
        if token.type == tokenize.OP and token.string in ("(", "[", "{"):
            depth += 1
        elif token.type == tokenize.OP and token.string in (")", "]", "}"):
            depth -= 1
        last_end = end
    return items


def split_options(line: str, takes_value: frozenset[str] | set[str]) -> tuple[list[str], str]:
    """Separate the leading ``--options`` from the call text that follows them."""
    stream = io.StringIO(line)
    lexer = shlex.shlex(stream, posix=True)
    lexer.whitespace_split = True
    options: list[str] = []
    while True:
        position = stream.tell()
        token = lexer.get_token()
        if token is None or token == lexer.eof:
            return options, ""
        if not token.startswith("-") or token == "-":
            return options, line[position:].strip()
        options.append(token)
        if token in takes_value:
            value = lexer.get_token()
            if value is None:
                raise UsageError(f"option {token} needs a value")
            options.append(value)


def parse_nodes(spec: str) -> list[Node]:
    """``2x4`` is two nodes of four ranks; ``2,4`` is one node of 2 and one of 4."""
    try:
        if "x" in spec:
            count, nproc = (int(part) for part in spec.split("x"))
            return [Node(nproc) for _ in range(count)]
        return [Node(int(part)) for part in spec.split(",")]
    except ValueError:
        raise UsageError(f"--nodes {spec!r}: write NxM (N nodes of M ranks) or M1,M2,...") from None


MAGIC_OPTIONS = tuple(o for o in OPTIONS if o.flag is not None)
"""The launch options the magic offers as flags (dicts such as ``env=`` are left to launch)."""
TAKES_VALUE = frozenset({"-o", "--out"} | {f for o in MAGIC_OPTIONS if o.flag_type is not None
                                          for f in o.flags})


def _option_arguments(magic: Any) -> Any:
    """Decorate the magic with one ``argument`` per launch option (``wire.options``)."""
    for option in reversed(MAGIC_OPTIONS):
        magic = argument(*option.flags, **_argument_spec(option))(magic)
    return magic


def _argument_spec(option: Option) -> dict[str, Any]:
    spec: dict[str, Any] = {"dest": option.name, "help": option.help}
    if option.flag_type is None:
        spec.update(action="store_true", default=False)
    else:
        spec.update(type=option.flag_type, default=None)
    return spec


@magics_class
class ElasticMagics(Magics):
    """``%elastic_run`` and ``%%elastic_run``."""

    @property
    def _ipython(self) -> InteractiveShell:
        assert self.shell is not None, "magics are used from the shell they are registered with"
        return self.shell

    @magic_arguments()
    @argument("-o", "--out", default=None, help="store the Job in this notebook variable")
    @argument("--block", action="store_true", help="wait for the job and return {rank: value}")
    @_option_arguments
    @line_cell_magic
    def elastic_run(self, line: str, cell: str | None = None) -> Any:
        """Run a function, or this cell, on every rank of an elastic job.

        Line magic: ``%elastic_run [options] fn arg1 arg2 key=value`` calls
        ``fn(arg1, arg2, key=value)`` on every rank; each argument is a Python
        expression evaluated in the notebook. ``%elastic_run [options]
        train.py --lr 0.1`` runs a script (``-m pkg.train ...``: a module) with
        those command-line arguments, as torchrun does.

        Cell magic: ``%%elastic_run [options]`` runs the cell's body on every
        rank. Notebook names the cell uses are sent along (cloudpickle); the
        value of its last expression is the rank's return value.

        Without ``--block`` the magic returns the Job at once: on a cell's
        last line its live dashboard is shown and it is stored in ``_``; it is
        also stored in ``-o NAME`` (``job = %elastic_run ...`` works too).
        With ``--block`` the dashboard is shown while the magic waits; it
        returns the results, {rank: value}.

        Examples
        --------
        ::

            %load_ext elastic_nb

            %elastic_run -n 4 -o job train 10 lr=0.1
            job.kill(1)                       # watch the restart on the dashboard

            %elastic_run -n 2 --block square 3
            # {0: 9, 1: 9}

            %elastic_run -n 2 -o job train.py --lr 0.1

            %elastic_run --nodes 2x2 --max-restarts 3 --prefix '[${node}:${rank}]:' train 5

            %elastic_run --nodes 1x2 --min-nodes 1 --max-nodes 2 -o job train 100
            job.add_node(elastic_nb.Node(2))  # scale up at the next rendezvous

            %%elastic_run -n 4 --block
            import os, torch.distributed as dist
            dist.init_process_group("gloo")
            t = torch.tensor(int(os.environ["RANK"]))
            dist.all_reduce(t)
            t.item()                          # each rank returns 6
        """
        option_words, call = split_options(line, TAKES_VALUE)
        args = self.elastic_run.parser.parse_args(option_words)
        options = self._launch_options(args)
        if cell is None:
            if not call:
                raise UsageError("%elastic_run needs a function: %elastic_run -n 4 train arg key=value "
                                 "(or use %%elastic_run to run a cell)")
            fn, fn_args, fn_kwargs = (_script_call(call) if args.module or _is_script(call)
                                      else self._evaluate_call(call))
        else:
            if call:
                raise UsageError(f"%%elastic_run runs the cell body; remove {call!r} from the magic line")
            fn, fn_args, fn_kwargs = run_cell_body, (cell, self._captured(cell)), {}
        job = launch(fn, *fn_args, **options, **fn_kwargs)
        if args.out:
            self._ipython.user_ns[args.out] = job
        if not args.block:
            return job  # on a cell's last line IPython shows its dashboard and sets ``_``
        try:
            job.show()
            return job.result()
        finally:  # --block hands out no handle: an interrupted wait stops its job
            if not job.done:
                job.stop()

    @line_magic
    def torchrun(self, line: str) -> Any:
        """Run a torchrun command line: ``%torchrun --standalone --nproc-per-node 2 train.py --lr 0.1``.

        The line is read by torchrun's own parser (every flag, with dashes or
        underscores); the script runs on every rank as under torchrun, and the
        Job is returned with its dashboard (``job = %torchrun ...`` keeps it).
        A flag elastic_nb cannot honour is an error that says what to use
        instead. ``%torchrun --help`` lists what each flag maps to.
        """
        try:
            run = torchrun_line.parse(line)
        except torchrun_line.TorchrunError as exc:
            raise UsageError(f"%torchrun: {exc}") from None
        if run is None:
            print(torchrun_line.table())
            return None
        job = launch(run.target, *run.args, **run.options())
        if run.log_rank is not None:
            from elastic_nb.ui.dashboard import display

            display.show_logs_of(job, run.log_rank)
        return job

    def _launch_options(self, args: Any) -> dict[str, Any]:
        if args.nproc is not None and args.nodes is not None:
            raise UsageError("give either -n N (one node) or --nodes NxM, not both")
        given = {o.name: getattr(args, o.name) for o in MAGIC_OPTIONS}
        options = {name: value for name, value in given.items()
                   if value is not None and value is not False}
        if "nodes" in options:
            options["nodes"] = parse_nodes(options["nodes"])
        return options

    def _evaluate_call(self, call: str) -> tuple[Any, tuple, dict[str, Any]]:
        fn_text, *items = split_call(call)
        fn = self._ipython.ev(fn_text)
        fn_args, fn_kwargs = [], {}
        for item in items:
            key, value = _keyword(item)
            if key is None:
                fn_args.append(self._ipython.ev(item))
            else:
                fn_kwargs[key] = self._ipython.ev(value)
        return fn, tuple(fn_args), fn_kwargs

    def _captured(self, cell: str) -> dict[str, Any]:
        try:
            names = used_names(cell)
        except SyntaxError as exc:
            raise UsageError(f"the cell is not valid Python: {exc}") from None
        namespace = self._ipython.user_ns
        captured = {name: namespace[name] for name in sorted(names)
                    if name in namespace and name not in _NOT_CAPTURED and not name.startswith("_")}
        for name, value in captured.items():
            try:
                cloudpickle.dumps(value)
            except Exception as exc:
                raise UsageError(f"the cell uses {name!r} ({type(value).__name__}), which cannot be "
                                 f"sent to the workers ({type(exc).__name__}: {exc}); create it "
                                 "inside the cell instead") from None
        return captured


def _is_script(call: str) -> bool:
    """``train.py --lr 0.1``: the call names a script file (a function is a Python name)."""
    first = call.split(None, 1)[0]
    return first.endswith(".py") or "/" in first


def _script_call(call: str) -> tuple[str, tuple[str, ...], dict[str, Any]]:
    """A script (or module) and its command-line arguments, split as a shell does."""
    try:
        target, *words = shlex.split(call)
    except ValueError as exc:
        raise UsageError(f"cannot split {call!r}: {exc}") from None
    return target, tuple(words), {}


def _keyword(item: str) -> tuple[str | None, str]:
    """``key=value`` is a keyword argument; ``a == b`` or ``f(x=1)`` is not."""
    name, sep, value = item.partition("=")
    if sep and name.isidentifier() and not value.startswith("="):
        return name, value
    return None, item


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext elastic_nb``: register ``%elastic_run`` / ``%%elastic_run`` and ``%torchrun``."""
    ipython.register_magics(ElasticMagics)
