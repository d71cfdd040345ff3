"""%elastic_run and %%elastic_run in a real ipykernel, driven by nbclient."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError
from kernel_util import Kernel, execute, notebook, outputs

from elastic_nb.ui import magics

WIDGET = "application/vnd.jupyter.widget-view+json"


def test_magics_launch_show_and_return_in_a_real_kernel(tmp_path):
    nb = notebook(
        "%load_ext elastic_nb",
        "import os\n"
        "def square(x, offset=0):\n"
        "    return x * x + int(os.environ['RANK']) + offset",
        "%elastic_run -n 2 --block square 3 offset=10",
        "assert _ == {0: 19, 1: 20}, _",
        "%elastic_run -n 2 -o job --prefix '<${rank}>' square 2",
        "assert _ is job\n"
        "assert job.result(timeout=120) == {0: 4, 1: 5}\n"
        "assert job.log_line_prefix_template == '<${rank}>'",
        "factor = 7",
        "%%elastic_run -n 2 --block\n"
        "import os\n"
        "rank = int(os.environ['RANK'])\n"
        "rank * factor",
        "assert _ == {0: 0, 1: 7}, _",
        "%%elastic_run -n 1 -o bad\n"
        "x = 1\n"
        "raise ValueError('boom from the cell')",
        "import elastic_nb as enb\n"
        "try:\n"
        "    bad.result(timeout=120)\n"
        "except enb.JobFailed as failure:\n"
        "    text = str(failure)\n"
        "assert 'boom from the cell' in text and \"raise ValueError('boom from the cell')\" in text, text",
        "from IPython.core.error import UsageError\n"
        "try:\n"
        "    get_ipython().run_line_magic('elastic_run', '-n 2')\n"
        "except UsageError as error:\n"
        "    assert 'needs a function' in str(error)\n"
        "else:\n"
        "    raise AssertionError('a missing function must be a UsageError')",
        "help_text = get_ipython().find_line_magic('elastic_run').__doc__\n"
        "assert '--max-restarts' in help_text and '%%elastic_run -n 4 --block' in help_text",
        "%elastic_run -n 1 -o cold --keep-warm 0 --start-method spawn square 1",
        "import time\n"
        "assert cold.result(timeout=120) == {0: 1}\n"
        "pid = cold.snapshot().nodes[0].host_pid\n"
        "deadline = time.monotonic() + 15\n"
        "while pid in [h.pid for h in enb.hosts()] and time.monotonic() < deadline:\n"
        "    time.sleep(0.05)\n"
        "assert pid not in [h.pid for h in enb.hosts()], 'keep-warm 0 ends the host'",
    )
    execute(nb, tmp_path)
    block, launched, cell_block = nb.cells[2], nb.cells[4], nb.cells[7]
    assert outputs(block, "text/plain")[-1] == "{0: 19, 1: 20}"
    assert outputs(block, WIDGET), "the dashboard is shown while blocking"
    shown = [o for o in launched.outputs if o.output_type in ("display_data", "execute_result")]
    assert len(shown) == 1 and shown[0].output_type == "execute_result" and WIDGET in shown[0].data
    assert "<table" in outputs(launched, "text/html")[0], "a text/html fallback for non-widget frontends"
    assert outputs(cell_block, "text/plain")[-1] == "{0: 0, 1: 7}"


def test_call_text_is_split_into_python_expressions():
    assert magics.split_call("fn a [1, 2] key='x y' f(x=1) -3 {'a': 1}") == [
        "fn", "a", "[1, 2]", "key='x y'", "f(x=1)", "-3", "{'a': 1}"]
    options, call = magics.split_options("-n 4 --prefix '[${rank}] ' --block train 1 'a b'",
                                         {"-n", "--prefix"})
    assert options == ["-n", "4", "--prefix", "[${rank}] ", "--block"]
    assert call == "train 1 'a b'"


def test_nodes_spec():
    assert [n.nproc for n in magics.parse_nodes("2x4")] == [4, 4]
    assert [n.nproc for n in magics.parse_nodes("1,3")] == [1, 3]
    with pytest.raises(UsageError, match="NxM"):
        magics.parse_nodes("two")


def test_cell_runs_with_captured_names_and_returns_its_last_expression():
    assert magics.run_cell_body("y = base + 1\ny * 2", {"base": 4}) == 10
    assert magics.run_cell_body("y = 1", {}) is None
    assert magics.used_names("a = b + c\nprint(a)") == {"a", "b", "c", "print"}


def test_interrupting_a_wait_gives_the_cell_back_and_leaves_the_job_running(tmp_path):
    """In a real kernel: ``job.result()`` interrupted (jupyter_client's interrupt) raises
    KeyboardInterrupt in the cell, says the job still runs, and the job does; ``%elastic_run
    --block`` interrupted stops its job (it hands out no handle to stop it with)."""
    with Kernel(tmp_path) as kernel:
        kernel.run("import elastic_nb as enb, scenarios\n"
                   "job = enb.launch(scenarios.tick_forever, nproc=2)\n"
                   "job.wait_until(lambda: 'tick 2' in job.logs(rank=1), timeout=120)")
        outputs = kernel.interrupted("print('waiting', flush=True)\njob.result()", "stream")
        assert any(o.get("ename") == "KeyboardInterrupt" for o in outputs)
        said = "".join(o.get("text", "") for o in outputs)
        assert "is still running" in said and "job.stop() ends it" in said
        assert "running 2" in kernel.run("print(job.state, len([w for w in job.workers "
                                         "if w.state == 'running']))")
        kernel.run("job.stop()\n%load_ext elastic_nb")
        outputs = kernel.interrupted("%elastic_run -n 2 -o blocked --block scenarios.tick_forever",
                                     "display_data")
        assert any(o.get("ename") == "KeyboardInterrupt" for o in outputs)
        assert "stopped" in kernel.run("print(blocked.state)")
