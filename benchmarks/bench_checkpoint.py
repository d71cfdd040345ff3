"""What a checkpoint costs: a resume after a kill beside torchrun, and async saves against blocking ones.

    python benchmarks/bench_checkpoint.py [--repeats 3] [--size 1000000] [--save-repeats 2]
        [--layers 4] [--width 2500] [--steps 20] [--every 5] [--skip-resume] [--skip-save]

1. Resume: the same script (``workloads.py checkpointed_steps``: a model of
   ``--size`` float32 parameters and its momentum, ``enb.save_checkpoint`` every
   5 steps, asynchronous, ``enb.restore_checkpoint`` at the start) on 2 gloo
   ranks, under

     torchrun    `python -m torch.distributed.run --standalone --nproc-per-node 2
                 --max-restarts 1 --monitor-interval 0.1 workloads.py checkpointed_steps ...`
                 (the checkpoint directory in ELASTIC_NB_CHECKPOINT_DIR: the same calls;
                 TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, as in elastic_nb's agents: with
                 the agent's store shared, the restarted attempt's new_group, the
                 checkpoints' own gloo group, read attempt 0's addresses from it and
                 failed, "Gloo connectFullMesh failed ... Connection refused")
     elastic_nb  `enb.launch("workloads.py", "checkpointed_steps", ..., nproc=2,
                 max_restarts=1, checkpoint_dir=...)`

   alternating, a fresh directory each run. Once rank 0 is past step 12 and a
   checkpoint is complete, rank 1 is SIGKILLed; the time from the kill to
   every rank of the next attempt past ``init_process_group`` (the launcher's
   part), to the end of rank 0's restore (the script's: its model, then
   ``restore_checkpoint``) and to the end of the first step after the resumed
   one (the step after the checkpoint's), from the ranks' own clock stamps.
   Medians of ``--repeats`` and the ratio to torchrun.
2. Save cost: ``--layers`` square linear layers of ``--width`` (4 x 2500^2 =
   25M float32 parameters, 100 MB; plain SGD, so the model is the whole
   checkpoint), gradients all-reduced on 2 gloo ranks, ``--steps`` steps, a
   save every ``--every``: none, blocking (``blocking=True``) and asynchronous
   (the default), alternating, ``--save-repeats`` runs each. The median step,
   the median step that called the save, and the mean step with the last
   save's remaining write counted in.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]

from workloads import save_cost  # noqa: E402

import elastic_nb as enb  # noqa: E402

SCRIPT = os.path.join(HERE, "workloads.py")
STEP = re.compile(r"STEP ([\d.]+) (\d+) (\d+)")
RESUMED = re.compile(r"RESUMED ([\d.]+) (\d+) (\d+)")
PID = re.compile(r"PID rank (\d+) pid (\d+) attempt 0 ")
JOINED = re.compile(r"PID rank \d+ pid \d+ attempt (\d+) entered ([\d.]+) joined ([\d.]+)")
KILL_AFTER = 12  # rank 0's step before rank 1 is killed (checkpoints at 0, 5, 10)
AFTER = 3  # steps the resumed attempt runs before it ends


def ready_to_kill(text: str, directory: str) -> bool:
    """Rank 0 is past ``KILL_AFTER`` in the first attempt and a checkpoint is complete."""
    steps = [int(s) for _, a, s in STEP.findall(text) if a == "0"]
    return bool(steps) and max(steps) >= KILL_AFTER and bool(
        glob.glob(os.path.join(directory, "step_*", "complete.json")))


def after_kill(text: str, killed: float) -> tuple[float, float, float, int] | None:
    """Seconds from the kill to every rank of the resumed attempt in its group, to the end of its
    restore and to the end of its first step, and the step it resumed at; None until all are."""
    joined = [float(t) for _, a, t in JOINED.findall(text) if a != "0"]
    resumed = [(float(t), int(s)) for t, a, s in RESUMED.findall(text) if a != "0"]
    if len(joined) < 2 or not resumed:
        return None
    restored, start = resumed[0]
    first = [float(t) for t, a, s in STEP.findall(text) if a != "0" and int(s) == start]
    if not first:
        return None
    return max(joined) - killed, restored - killed, first[0] - killed, start


def script_args(size: int) -> list[str]:
    return ["checkpointed_steps", str(size), "5", "0.02", str(AFTER)]


def resume_torchrun(size: int, timeout: float = 180) -> tuple[float, float, float, int]:
    directory = tempfile.mkdtemp(prefix="bench_checkpoint-torchrun-")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node=2", "--max-restarts=1", "--monitor-interval=0.1", SCRIPT,
               *script_args(size)]
    env = {**os.environ, "ELASTIC_NB_CHECKPOINT_DIR": directory, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    lines: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")),
                              daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + timeout
        while not ready_to_kill("".join(lines), directory):
            assert time.monotonic() < deadline and proc.poll() is None, "torchrun never got going"
            time.sleep(0.01)
        pids = {int(r): int(p) for r, p in PID.findall("".join(lines))}
        killed = time.time()
        os.kill(pids[1], signal.SIGKILL)
        result = None
        while result is None:
            assert time.monotonic() < deadline, "torchrun did not resume in time"
            result = after_kill("".join(lines), killed)
            time.sleep(0.01)
        assert proc.wait(timeout=60) == 0, "".join(lines)[-3000:]
        return result
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        reader.join()
        shutil.rmtree(directory, ignore_errors=True)


def resume_enb(size: int, timeout: float = 180) -> tuple[float, float, float, int]:
    directory = tempfile.mkdtemp(prefix="bench_checkpoint-enb-")
    job = enb.launch(SCRIPT, *script_args(size), nproc=2, max_restarts=1,
                     checkpoint_dir=directory)
    try:
        job.wait_until(lambda: ready_to_kill(job.logs(rank=0), directory), timeout=timeout,
                       what="a checkpoint and step 12")
        killed = time.time()
        job.kill(1)
        result = job.wait_until(lambda: after_kill(job.logs(), killed), timeout=timeout,
                                what="the first step after the resume")
        job.result(timeout=timeout)
        return result
    finally:
        job.stop()
        shutil.rmtree(directory, ignore_errors=True)


def save_run(mode: str, layers: int, width: int, steps: int,
             every: int) -> tuple[float, float | None, float, int]:
    """Median step, median saving step (None without saves), mean step with the drain, bytes."""
    directory = tempfile.mkdtemp(prefix="bench_checkpoint-save-")
    job = enb.launch(save_cost, layers, width, steps, every, mode, nproc=2,
                     checkpoint_dir=directory)
    try:
        out = job.result(timeout=600)[0]
    finally:
        job.stop()
        shutil.rmtree(directory, ignore_errors=True)
    times, saved = out["times"], set(out["saved"])
    measured = list(range(2, steps))  # the first two steps warm up
    plain = [times[i] for i in measured]
    saving = [times[i] for i in measured if i in saved]
    mean = (sum(plain) + out["drain"]) / len(plain)
    return (statistics.median(plain), statistics.median(saving) if saving else None, mean,
            out["bytes"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="resume runs of each")
    parser.add_argument("--size", type=int, default=1_000_000, help="parameters, resume part")
    parser.add_argument("--save-repeats", type=int, default=2, help="runs of each save mode")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=2500)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--skip-resume", action="store_true")
    parser.add_argument("--skip-save", action="store_true")
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores")
    if not args.skip_resume:
        runs: dict[str, list[tuple[float, float, float, int]]] = {"torchrun": [],
                                                                   "elastic_nb": []}
        for _ in range(args.repeats):
            runs["torchrun"].append(resume_torchrun(args.size))
            runs["elastic_nb"].append(resume_enb(args.size))
        print(f"resume: 2 gloo ranks, {args.size:,} parameters + momentum "
              f"({args.size * 8 / 2**20:.0f} MB a checkpoint), rank 1 SIGKILLed; seconds from "
              f"the kill, medians of {args.repeats}")
        base = statistics.median(r[2] for r in runs["torchrun"])
        for name, values in runs.items():
            joined, restored, first = (statistics.median(r[i] for r in values) for i in range(3))
            starts = sorted({r[3] for r in values})
            print(f"  {name:<11} every rank in its group {joined:.2f}   restore done "
                  f"{restored:.2f}   first step after the resumed one {first:.2f} "
                  f"({first / base:.2f}x torchrun)   resumed at steps {starts}", flush=True)
    if not args.skip_save:
        modes = ("none", "blocking", "async")
        figures: dict[str, list[tuple[float, float | None, float, int]]] = {m: [] for m in modes}
        for _ in range(args.save_repeats):
            for mode in modes:
                figures[mode].append(save_run(mode, args.layers, args.width, args.steps,
                                              args.every))
        size = figures["none"][0][3]
        print(f"save cost: 2 gloo ranks, {args.layers} x {args.width}^2 = "
              f"{size // 4 / 1e6:.1f}M float32 parameters ({size / 1e6:.0f} MB), a save every "
              f"{args.every} of {args.steps} steps; seconds, medians of {args.save_repeats} runs")
        base = statistics.median(mean for _, _, mean, _ in figures["none"])
        for mode in modes:
            step = statistics.median(s for s, _, _, _ in figures[mode])
            mean = statistics.median(m for _, _, m, _ in figures[mode])
            saving = [s for _, s, _, _ in figures[mode] if s is not None]
            at_save = f"   saving step {statistics.median(saving):.3f}" if saving else ""
            print(f"  {mode:<9} median step {step:.3f}{at_save}   mean step {mean:.3f} "
                  f"({mean / base:.2f}x no saves, +{(mean - base) * 1000:.0f} ms a step)",
                  flush=True)


if __name__ == "__main__":
    main()
