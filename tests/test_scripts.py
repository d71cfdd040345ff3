"""torchrun scripts, unchanged: a script or module as every rank's entrypoint, and ``%torchrun``.

The scripts here are written the way torchrun users write them: argparse,
``if __name__ == "__main__"``, the environment torchrun sets,
``init_process_group("gloo", init_method="env://")``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cloudpickle
import pytest
from kernel_util import Kernel
from util import job_processes, join_command, wait_until

import elastic_nb as enb
from elastic_nb.kernel import planning
from elastic_nb.ui import magics, torchrun
from elastic_nb.wire.entrypoints import ScriptCall

TRAIN = '''\
"""Train a tiny model: a torchrun script."""
import argparse
import json
import os
import sys
import time

import torch
import torch.distributed as dist


def parse_args():
    parser = argparse.ArgumentParser(description="a torchrun script")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--dump", default=None, help="write argv, sys.path and env to DIR")
    parser.add_argument("--fail-rank", type=int, default=-1)
    parser.add_argument("--exit-code", type=int, default=None)
    parser.add_argument("--hang-rank", type=int, default=-1)
    parser.add_argument("--pause-rank", type=int, default=-1)
    parser.add_argument("--wait-for-kill", action="store_true")
    return parser.parse_args()


def main():
    args = parse_args()
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", init_method="env://")
    if args.dump:
        seen = {"argv": sys.argv, "path0": sys.path[0], "env": dict(os.environ), "name": __name__,
                "cwd": os.getcwd()}
        with open(os.path.join(args.dump, f"rank{rank}.json"), "w") as out:
            json.dump(seen, out)
    if args.wait_for_kill and os.environ["TORCHELASTIC_RESTART_COUNT"] == "0":
        print("waiting to be killed", flush=True)
        time.sleep(600)
    weights = torch.ones(4)
    for step in range(args.steps):
        print(f"step {step}", flush=True)
        if step == args.steps - 1:
            print("hanging", flush=True)
            if rank == args.hang_rank:
                time.sleep(600)  # the hang
        dist.all_reduce(weights)
    if rank == args.pause_rank:
        lr = 0.5
        breakpoint()  # the pause
        weights *= lr
    if rank == args.fail_rank:
        raise RuntimeError(f"rank {rank}: the loss is nan")  # the failure
    dist.destroy_process_group()
    if args.exit_code is not None:
        print(f"rank {rank} exits with {args.exit_code if rank == 1 else 0}", file=sys.stderr)
        sys.exit(args.exit_code if rank == 1 else 0)


if __name__ == "__main__":
    main()
'''


def line_of(marker: str) -> int:
    return next(i for i, line in enumerate(TRAIN.splitlines(), 1) if marker in line)


@pytest.fixture
def script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``train.py`` in a fresh directory, which is the kernel's (and so the ranks') cwd."""
    (tmp_path / "train.py").write_text(TRAIN)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "train.py"


def torchrun_variables(seen: dict, parent: dict[str, str]) -> dict[str, str]:
    """What the launcher set in a rank's environment (not inherited from ``parent``)."""
    return {k: v for k, v in seen["env"].items() if k not in parent}


def test_a_script_sees_what_torchrun_gives_it(script, tmp_path, monkeypatch):
    monkeypatch.setenv("ENB_SETTING", "from the kernel")  # what %env does in a notebook
    (tmp_path / "enb").mkdir()
    (tmp_path / "torchrun").mkdir()
    job = enb.launch("train.py", "--dump", "enb", "--exit-code", "0", nproc=2, max_restarts=1)
    assert job.result(timeout=120) == {0: 0, 1: 0}  # rank 1 ends with sys.exit(0)
    parent = dict(os.environ)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc-per-node", "2", "--max-restarts", "1", "train.py", "--dump",
                    "torchrun"], check=True, capture_output=True, timeout=120, env=parent)
    for rank in (0, 1):
        ours = json.loads((tmp_path / "enb" / f"rank{rank}.json").read_text())
        theirs = json.loads((tmp_path / "torchrun" / f"rank{rank}.json").read_text())
        set_by_torchrun = torchrun_variables(theirs, parent)
        assert {"RANK", "LOCAL_RANK", "GROUP_RANK", "ROLE_RANK", "ROLE_NAME", "LOCAL_WORLD_SIZE",
                "WORLD_SIZE", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_RUN_ID",
                "OMP_NUM_THREADS", "TORCHELASTIC_ERROR_FILE"} <= set(set_by_torchrun)
        missing = set(set_by_torchrun) - set(ours["env"])
        assert not missing, f"torchrun sets {sorted(missing)}, elastic_nb does not"
        per_job = {"MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_ERROR_FILE",
                   "TORCHELASTIC_USE_AGENT_STORE"}  # this run's own addresses, ids and files
        assert {k: ours["env"][k] for k in set_by_torchrun if k not in per_job} == \
            {k: v for k, v in set_by_torchrun.items() if k not in per_job}
        assert ours["env"]["ENB_SETTING"] == "from the kernel"
        assert theirs["argv"] == ["train.py", "--dump", "torchrun"]
        assert ours["argv"] == ["train.py", "--dump", "enb", "--exit-code", "0"]
        assert ours["path0"] == theirs["path0"] == str(tmp_path)
        assert ours["name"] == "__main__"


def test_a_node_joined_from_another_directory_runs_the_script_by_its_absolute_path(script,
                                                                                  tmp_path):
    """``python -m elastic_nb join`` started where ``train.py`` is not (as an SSH node starts in
    its home): its rank runs the file the kernel resolved, which is its argv[0]."""
    (tmp_path / "out").mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    job = enb.launch("train.py", "--dump", str(tmp_path / "out"), nproc=1, min_nodes=2,
                     max_nodes=2)
    terminal = subprocess.run(join_command(job, 1), cwd=elsewhere, capture_output=True,
                              text=True, timeout=180)
    assert terminal.returncode == 0, terminal.stderr[-3000:]
    assert job.result(timeout=60) == {0: 0, 1: 0}
    joined = next(w.rank for w in job.workers if w.node == 1)
    seen = json.loads((tmp_path / "out" / f"rank{joined}.json").read_text())
    assert seen["cwd"] == str(elsewhere), "the joined rank works where its node was started"
    assert seen["argv"] == [str(script), "--dump", str(tmp_path / "out")]  # the path it ran
    assert seen["path0"] == str(tmp_path)


def test_a_failing_script_fails_the_job_with_its_file_and_line(script):
    job = enb.launch("train.py", "--fail-rank", "1", nproc=2)
    with pytest.raises(enb.JobFailed) as failed:
        job.result(timeout=120)
    text = str(failed.value)
    assert text.startswith("rank 1 (node 0, default) failed: RuntimeError: rank 1: the loss is nan")
    assert f'File "train.py", line {line_of("# the failure")}, in main' in text


def test_sys_exit_with_a_code_fails_with_that_code_and_the_end_of_stderr(script):
    job = enb.launch("train.py", "--exit-code", "3", nproc=2)
    with pytest.raises(enb.JobFailed) as failed:
        job.result(timeout=120)
    assert list(failed.value.failures) == [1] and failed.value.failures[1].exitcode == 3
    assert "exited with code 3" in str(failed.value)
    assert "rank 1 exits with 3" in str(failed.value), "the tail of the rank's stderr"


def test_a_killed_rank_is_restarted_and_the_script_runs_again(script):
    job = enb.launch("train.py", "--wait-for-kill", nproc=2, max_restarts=1)
    try:
        job.wait_until(lambda: job.logs().count("waiting to be killed") == 2, timeout=120,
                       what="both ranks waiting")
        job.kill(1)
        assert job.result(timeout=120) == {0: 0, 1: 0}
    finally:
        job.stop()
    assert job.restart_count == 1
    assert job.failure_history[0].rank == 1 and job.failure_history[0].signal == "SIGKILL"


def test_the_hang_map_and_the_stacks_name_the_script_file_and_line(script):
    job = enb.launch("train.py", "--steps", "3", "--hang-rank", "1", nproc=2, hang_after=0)
    try:
        job.wait_until(lambda: job.logs().count("hanging") == 2, timeout=120, what="both hanging")
        report = wait_until(lambda: (r := job.hang_report()).suspects and r, timeout=60,
                            what="the hang map's suspect")
        stacks = job.stacks()
    finally:
        job.stop()
    hang = line_of("# the hang")
    assert report.suspects == [1]
    assert f"rank 1 is at train.py:{hang} in main: `time.sleep(600)  # the hang`" in report.answer
    assert report.ranks[1].stack[0][:3] == ("train.py", line_of("    main()"), "<module>"), \
        "the stack starts at the script (the trampoline and runpy cut off)"
    assert f'File "train.py", line {hang} in main' in stacks[1]


def test_collective_timeout_bounds_a_script_stuck_in_an_all_reduce(script):
    job = enb.launch("train.py", "--hang-rank", "1", nproc=2, collective_timeout=3)
    with pytest.raises(enb.JobFailed, match=r"collective timeout: rank 0's all_reduce did not "
                                            r"complete within collective_timeout=3 s"):
        job.result(timeout=120)


def test_breakpoint_in_a_script_pauses_the_rank_for_the_debugger(script):
    job = enb.launch("train.py", "--pause-rank", "1", nproc=2)
    try:
        job.wait_until(lambda: any(w.state == "paused" for w in job.workers), timeout=120,
                       what="rank 1 paused")
        (event,) = [e for e in job.events if e.kind == "paused"]
        assert event.rank == 1
        assert event.detail["where"] == f"train.py:{line_of('# the pause') + 1} in main"
        session = job.debug_session(1)
        assert session.send("p lr, args.steps") == "(0.5, 2)\n"
        session.send("c")
        assert job.result(timeout=120) == {0: 0, 1: 0}
    finally:
        job.stop()


def test_post_mortem_stops_a_failing_script_at_its_raise(script):
    job = enb.launch("train.py", "--fail-rank", "0", nproc=2, post_mortem=True)
    try:
        job.wait_until(lambda: any(w.state == "paused" for w in job.workers), timeout=120,
                       what="rank 0 paused after its error")
        session = job.debug_session(0)
        assert "train.py" in session.output and "-> raise RuntimeError" in session.output
        assert session.send("p rank") == "0\n"
        session.send("c")
        with pytest.raises(enb.JobFailed, match="the loss is nan"):
            job.result(timeout=120)
    finally:
        job.stop()


def test_a_module_runs_as_torchrun_m_runs_it(tmp_path, monkeypatch):
    package = tmp_path / "trainer"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "main.py").write_text(
        "import json, os, sys\n"
        "import torch.distributed as dist\n"
        "if __name__ == '__main__':\n"
        "    dist.init_process_group('gloo', init_method='env://')\n"
        "    print(json.dumps({'argv': sys.argv, 'path0': sys.path[0]}), flush=True)\n"
        "    dist.barrier()\n")
    monkeypatch.chdir(tmp_path)
    job = enb.launch("trainer.main", "--epochs", "1", module=True, nproc=2)
    assert job.result(timeout=120) == {0: 0, 1: 0}
    seen = json.loads(job.logs(rank=1).strip().splitlines()[-1].split("]:", 1)[1])
    assert seen == {"argv": [str(package / "main.py"), "--epochs", "1"], "path0": str(tmp_path)}


def test_a_missing_script_or_module_is_refused_before_any_process_starts(script):
    before = {p.pid for p in job_processes()}
    with pytest.raises(enb.LaunchError, match=r"no script 'trian.py' in .*Give the script's path"):
        enb.launch("trian.py", nproc=2)
    with pytest.raises(enb.LaunchError, match=r"no module 'no_such\.module' on the ranks' path"):
        enb.launch("no_such.module", module=True, nproc=2)
    with pytest.raises(enb.LaunchError, match="'json' is a module: pass module=True"):
        enb.launch("json", nproc=2)
    with pytest.raises(enb.LaunchError, match=r"a script's arguments are strings.*write '0\.1'"):
        enb.launch("train.py", "--lr", 0.1, nproc=2)
    with pytest.raises(enb.LaunchError, match="not keywords"):
        enb.launch("train.py", lr="0.1", nproc=2)
    assert {p.pid for p in job_processes()} <= before


def test_a_node_can_run_its_own_script_and_a_module_needs_a_name(script):
    payload = planning.plan_node(0, enb.Node(1, fn="train.py", args=("--steps", "1")), None).payload
    assert cloudpickle.loads(payload)["script"] == ScriptCall(
        "train.py", ("--steps", "1"), resolved=str(script))
    with pytest.raises(enb.LaunchError, match="module=True runs a module by its name"):
        enb.launch(print, module=True, nproc=1)
    with pytest.raises(enb.LaunchError, match="fn must be a function, or a script's path"):
        enb.launch(3, nproc=1)


# ------------------------------------------------------------------ %torchrun's line

def test_every_torchrun_flag_is_mapped_or_refused():
    dests = {a.dest for a in torchrun.parser()._actions if a.option_strings} - {"help"}
    assert dests == set(torchrun.BY_DEST), "a torchrun flag without a row in the table"


def test_a_torchrun_line_becomes_launch_arguments():
    run = torchrun.parse("--standalone --nproc_per_node=2 --nnodes 1:3 --max-restarts 2 "
                         "--rdzv-conf join_timeout=30,last_call_timeout=2 --role trainer "
                         "-m pkg.train --lr 0.1")
    assert run is not None and (run.target, run.args) == ("pkg.train", ("--lr", "0.1"))
    options = run.options()
    assert [(n.nproc, n.role) for n in options.pop("nodes")] == [(2, "trainer")]
    assert options == {"module": True, "min_nodes": 1, "max_nodes": 3, "max_restarts": 2,
                       "rdzv_timeout": 30.0, "rdzv_configs": {"last_call_timeout": "2"}}
    titan = torchrun.parse("--nproc_per_node=2 --rdzv_backend c10d --rdzv_endpoint=localhost:0 "
                           "--local-ranks-filter 1 --role rank --tee 3 -m torchtitan.train")
    assert titan is not None and titan.log_rank == 1
    assert [(n.nproc, n.role) for n in titan.options()["nodes"]] == [(2, "rank")]
    assert "endpoint" not in titan.options(), "a c10d store on this machine: the embedded one"


def test_torchrun_environment_variables_count_as_flags(monkeypatch):
    monkeypatch.setenv("PET_MAX_RESTARTS", "4")
    run = torchrun.parse("train.py")
    assert run is not None and run.options()["max_restarts"] == 4
    monkeypatch.setenv("PET_NO_PYTHON", "1")
    with pytest.raises(torchrun.TorchrunError, match="--no-python is not supported"):
        torchrun.parse("train.py")


@pytest.mark.parametrize("line, message", [
    ("--foo 1 train.py", "unrecognized arguments: --foo"),
    ("--no-python train.py", "--no-python is not supported: elastic_nb runs Python scripts"),
    ("--local-ranks-filter 0,1 train.py", "the dashboard's log pane shows one rank, or all"),
    ("--nnodes 2 --local-ranks-filter 0 train.py", "give one rank of a one-node job"),
    ("--node-rank 1 train.py", "--node-rank 1: elastic_nb starts and numbers every node"),
    ("--standalone --rdzv-endpoint 10.0.0.1:29400 train.py", "give one of them"),
    ("--nnodes 3:1 train.py", "need 1 <= MIN <= MAX"),
    ("", "give the script and its arguments"),
])
def test_a_flag_that_cannot_be_honoured_is_an_error_that_names_it(line, message):
    with pytest.raises(torchrun.TorchrunError, match=message):
        torchrun.parse(line)


def test_elastic_run_tells_a_script_from_a_function():
    assert magics._is_script("train.py --lr 0.1") and magics._is_script("../jobs/train --x")
    assert not magics._is_script("train 0.1 steps=5")
    assert magics._script_call("train.py --name 'a b' --lr 0.1") == (
        "train.py", ("--name", "a b", "--lr", "0.1"), {})
    parser = magics.ElasticMagics.elastic_run.parser
    assert parser.parse_args(["-m", "-n", "2"]).module is True


def test_torchrun_in_a_real_kernel(script, tmp_path):
    (tmp_path / "out").mkdir()
    with Kernel(tmp_path) as kernel:
        kernel.run("%load_ext elastic_nb\n%env ENB_LR=0.25")
        kernel.run("job = %torchrun --standalone --nproc-per-node 2 --max-restarts 1 "
                   "train.py --dump out")
        kernel.run("assert job.result(timeout=120) == {0: 0, 1: 0}\n"
                   "assert job.max_restarts == 1 and len(job.workers) == 2")
        kernel.run("from elastic_nb.ui.dashboard import display\n"
                   "pane = display.dashboard(job)\n"
                   "filtered = %torchrun --nproc-per-node 2 --local-ranks-filter 1 train.py\n"
                   "assert filtered.result(timeout=120) == {0: 0, 1: 0}\n"
                   "board = display.dashboard(filtered)\n"
                   "board.render()\n"
                   "assert board.log_rank.value == 1, board.log_rank.value\n"
                   "assert pane.log_rank.value == -1, 'a job without the flag shows all ranks'")
        seen = json.loads((tmp_path / "out" / "rank1.json").read_text())
        assert seen["argv"] == ["train.py", "--dump", "out"] and seen["env"]["ENB_LR"] == "0.25"
        assert "%elastic_run" not in kernel.run("%torchrun --help"), "the table, not a usage line"
        table = kernel.run("%torchrun --help")
        assert "--nproc-per-node, --nproc_per_node" in table and "--no-python" in table
        for line, named in (("--bogus 1 train.py", "--bogus"),
                            ("--no-python train.py", "--no-python is not supported")):
            refused = kernel.run("from IPython.core.error import UsageError\n"
                                 "try:\n"
                                 f"    get_ipython().run_line_magic('torchrun', {line!r})\n"
                                 "except UsageError as error:\n"
                                 "    print(error)\n")
            assert named in refused, refused
        assert kernel.run("results = %elastic_run -n 2 --block train.py --steps 1\n"
                          "print(results)").strip().endswith("{0: 0, 1: 0}")
