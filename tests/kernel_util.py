"""Run notebooks in a real ipykernel (nbclient, or jupyter_client where a cell reads stdin)
and read their outputs."""

from __future__ import annotations

import json
import os
import queue
import sys
import time
from pathlib import Path
from typing import Any

import nbformat
import psutil
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager, start_new_kernel
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


def execute_with_stdin(nb: nbformat.NotebookNode, cwd: Path, answers: list[str],
                       timeout: float = 240) -> list[str]:
    """Execute every code cell in a fresh python3 kernel, answering each ``input()`` from
    ``answers`` in order (nbclient cannot); the prompts asked. Raises on an error cell."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    manager, client = start_new_kernel(kernel_name="python3", cwd=str(cwd), env=env)
    return run_cells(manager, client, nb, answers, timeout)


def execute_under(prefix: list[str], nb: nbformat.NotebookNode, cwd: Path, answers: list[str],
                  env: dict[str, str], timeout: float = 240) -> list[str]:
    """As ``execute_with_stdin``, in a kernel started under ``prefix`` (``nsenter --net=...``:
    in another network namespace). Its channels are Unix sockets (``ipc``), which cross
    network namespaces, where the default TCP ones on loopback would not."""
    specs = cwd / "kernels"
    spec = specs / "enb-under"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [*prefix, sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "under a prefix", "language": "python"}))
    manager = KernelManager(kernel_name="enb-under", transport="ipc", ip=str(cwd / "kernel-ipc"),
                            connection_file=str(cwd / "kernel.json"),
                            kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(specs)]))
    env = {**os.environ, **env,
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])}
    manager.start_kernel(cwd=str(cwd), env=env)
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=120)
    except BaseException:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
        raise
    return run_cells(manager, client, nb, answers, timeout)


def run_cells(manager: KernelManager, client: Any, nb: nbformat.NotebookNode, answers: list[str],
              timeout: float) -> list[str]:
    """Every code cell in turn in a started kernel, answering each ``input()`` from
    ``answers``; the prompts asked. Raises on an error cell; shuts the kernel down."""
    pending, prompts = list(answers), []
    try:
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            cell.outputs = []
            msg_id = client.execute(cell.source, allow_stdin=True)
            _collect(client, msg_id, cell, pending, prompts, timeout)
            errors = [o for o in cell.outputs if o.output_type == "error"]
            if errors:
                raise AssertionError(f"cell failed:\n{cell.source}\n" + "\n".join(errors[0].traceback))
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=False)
    assert not pending, f"the notebook did not ask for {pending}"
    return prompts


def _collect(client, msg_id: str, cell: nbformat.NotebookNode, pending: list[str],
             prompts: list[str], timeout: float) -> None:
    """Outputs of one execution until the kernel is idle again; stdin requests answered."""
    while True:
        try:
            request = client.get_stdin_msg(timeout=0.05)
        except queue.Empty:
            pass
        else:
            prompts.append(request["content"]["prompt"])
            assert pending, f"the notebook asked for more input: {request['content']['prompt']!r}"
            client.input(pending.pop(0))
        try:
            message = client.get_iopub_msg(timeout=0.05)
        except queue.Empty:
            continue
        if message["parent_header"].get("msg_id") != msg_id:
            continue
        kind = message["msg_type"]
        if kind == "status" and message["content"]["execution_state"] == "idle":
            return
        if kind in ("stream", "display_data", "execute_result", "error"):
            cell.outputs.append(nbformat.v4.output_from_msg(message))


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


class Kernel:
    """A real python3 kernel for cells run one at a time, interrupts included."""

    def __init__(self, cwd: Path) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"),
                                             *filter(None, [env.get("PYTHONPATH")])])
        self.manager, self.client = start_new_kernel(kernel_name="python3", cwd=str(cwd), env=env)

    def __enter__(self) -> Kernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)

    def run(self, source: str, timeout: float = 240) -> str:
        """Run a cell; the text it printed. AssertionError if it raised."""
        outputs = self._outputs(self.client.execute(source), timeout)
        errors = [o for o in outputs if o.output_type == "error"]
        assert not errors, "\n".join(errors[0].traceback)
        return "".join(o.get("text", "") for o in outputs)

    def interrupted(self, source: str, started: str, timeout: float = 120) -> list:
        """Run a blocking cell and interrupt the kernel once the cell has produced an output
        of type ``started`` (``stream``: it printed it is about to block; ``display_data``:
        a magic showed its dashboard and waits); the cell's outputs."""
        msg_id = self.client.execute(source)
        cell = nbformat.v4.new_code_cell("")
        deadline = time.monotonic() + timeout
        while not any(o.output_type == started for o in cell.outputs):
            assert time.monotonic() < deadline, f"the cell never produced {started}"
            try:
                message = self.client.get_iopub_msg(timeout=0.1)
            except queue.Empty:
                continue
            if (message["parent_header"].get("msg_id") == msg_id
                    and message["msg_type"] in ("stream", "display_data", "error")):
                cell.outputs.append(nbformat.v4.output_from_msg(message))
        self._wait_blocked(deadline)
        self.manager.interrupt_kernel()
        return cell.outputs + self._outputs(msg_id, timeout)

    def _wait_blocked(self, deadline: float) -> None:
        """Until the kernel's main thread sleeps (blocked in the wait the cell went on to),
        seen so several times in a row: an interrupt then lands inside that wait."""
        main = psutil.Process(self.manager.provisioner.pid)
        asleep = 0
        while asleep < 5:
            assert time.monotonic() < deadline, "the cell never blocked"
            asleep = asleep + 1 if main.status() == psutil.STATUS_SLEEPING else 0
            time.sleep(0.02)

    def _outputs(self, msg_id: str, timeout: float) -> list:
        cell = nbformat.v4.new_code_cell("")
        _collect(self.client, msg_id, cell, [], [], timeout)
        return cell.outputs
