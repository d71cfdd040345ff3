"""A job no other user can steer: another local user attacks it with what it can see.

A second Unix user, made by the test (``attacker`` in conftest.py), runs
``tests/attack.py`` with the system's Python and only the store's address
and the run id. Each attack is one that landed before the job signed its
rendezvous state and required its key: a pickle in the rendezvous state
(c10d and etcd3), a join with the store's token, a forged result, a link
planted where the job writes its key. Under ``trust_store=True`` the same
pickle runs: the attack is real, and what ``trust_store`` trusts is shown.
"""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

import pytest
import scenarios
from attack import pwn
from util import job_processes, wait_until

import elastic_nb as enb


def forge_state(attacker, job: enb.Job, marker: str):
    """The attacker writes a pickle that creates ``marker`` as the job's rendezvous state."""
    payload = Path(attacker.dir) / "state"
    if job.backend == "c10d":  # torch's c10d backend keeps the state base64-encoded
        payload.write_bytes(base64.b64encode(pwn(marker)))
        return attacker.run("store-set", job.endpoint, f"/torch.rendezvous.{job.run_id}",
                            str(payload))
    payload.write_bytes(pwn(marker))
    return attacker.run("etcd-put", job.endpoint, f"/torchelastic/elastic_nb/{job.run_id}/state",
                        str(payload))


def two_nodes(tmp_path: Path, **options) -> tuple[enb.Job, Path]:
    release = tmp_path / "release"
    job = enb.launch(scenarios.collective_until, str(release), nodes=[enb.Node(1), enb.Node(1)],
                     **options)
    job.wait_until(lambda: all(f"rank {r} in world 2" in job.logs(rank=r) for r in (0, 1)),
                   timeout=120, what="both ranks in a world of 2")
    return job, release


@pytest.mark.backends("c10d", "etcd3")
def test_a_pickle_written_into_the_rendezvous_state_runs_nowhere(rdzv, tmp_path, attacker):
    job, release = two_nodes(tmp_path, **rdzv)
    marker = os.path.join(attacker.dir, "pwned")
    try:
        attack = forge_state(attacker, job, marker)
        assert attack.returncode == 0, attack.stderr
        forged = job.wait_until(lambda: [e for e in job.events if e.kind == "state_forged"],
                                timeout=30, what="an agent to read the forged state")
        assert "not signed with this job's key" in forged[0].detail["reason"]
        assert job.endpoint in forged[0].detail["reason"]
        assert job.state == "running"
        release.touch()
        assert job.result(timeout=60) == {0: 0, 1: 10}
    finally:
        job.stop()
    assert not os.path.exists(marker), "a process of the job ran the other user's pickle"
    assert job.restart_count == 0


def test_under_trust_store_the_same_pickle_runs(tmp_path, attacker):
    """What trust_store=True trusts: the store. The same attack lands (so the test above
    would see it), and the dashboard says so."""
    job, _ = two_nodes(tmp_path, trust_store=True)
    marker = os.path.join(attacker.dir, "pwned")
    try:
        assert "whoever can reach the store can run code" in job.summary()
        assert forge_state(attacker, job, marker).returncode == 0
        wait_until(lambda: os.path.exists(marker), timeout=30,
                   what="the unsigned agents to unpickle the attacker's state")
    finally:
        job.stop()


def test_a_keyless_join_is_refused_by_default(tmp_path, attacker):
    job = enb.launch(scenarios.collective_until, str(tmp_path / "release"), nproc=1, max_nodes=2)
    try:
        job.wait_until(lambda: "in world 1" in job.logs(), timeout=60, what="the rank to run")
        payload = Path(attacker.dir) / "value"
        payload.write_bytes(pwn(os.path.join(attacker.dir, "pwned")))
        attack = attacker.run("join", job.endpoint, job.run_id, str(payload))
        answer = next(line for line in attack.stdout.splitlines() if line.startswith("ANSWER "))
        assert '"kind": "rejected"' in answer and "--key-file" in answer, attack.stdout
        assert "job.join_command()" in answer and "trust_store=True" in answer
        assert job.nodes == {0: "running"}
    finally:
        job.stop()


def test_under_trust_store_a_keyless_join_is_admitted_and_its_forged_results_are_ignored(
        tmp_path, attacker):
    release = tmp_path / "release"
    job = enb.launch(scenarios.collective_until, str(release), nproc=1, max_nodes=2,
                     trust_store=True)
    marker = os.path.join(attacker.dir, "pwned")
    payload = Path(attacker.dir) / "value"
    payload.write_bytes(pwn(marker))
    mallory = None
    try:
        job.wait_until(lambda: "in world 1" in job.logs(), timeout=60, what="the rank to run")
        mallory = subprocess.Popen(
            ["runuser", "-u", attacker.user, "--", "/usr/bin/python3", attacker.script, "join",
             job.endpoint, job.run_id, str(payload)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert mallory.stdout is not None
        answer = mallory.stdout.readline()
        assert answer.startswith("ANSWER ") and '"kind": "accepted"' in answer, answer
        assert mallory.stdout.readline() == "SENT\n"
        refused = job.wait_until(lambda: [e for e in job.events if e.kind == "report_refused"],
                                 timeout=30, what="the forged results refused")
        assert refused[0].node == 1 and refused[0].detail["ranks"] == [0]
        release.touch()
        assert job.result(timeout=60) == {0: 0}
    finally:
        if mallory is not None:
            mallory.communicate(timeout=30)
        job.stop()
    assert not os.path.exists(marker), "the kernel unpickled the forged result"


def test_a_link_or_a_directory_planted_in_log_dir_is_refused_before_anything_starts(attacker):
    elsewhere = Path(attacker.dir) / "elsewhere"
    for command in (["mkdir", str(elsewhere)], ["ln", "-s", str(elsewhere),
                                                 str(Path(attacker.dir) / "linked")],
                    ["mkdir", str(Path(attacker.dir) / "theirs")]):
        subprocess.run(["runuser", "-u", attacker.user, "--", *command], check=True)
    for run_id, complaint in (("linked", "is a link"), ("theirs", "choose a log_dir of your own")):
        with pytest.raises(enb.LaunchError, match=complaint):
            enb.launch(scenarios.happy, nproc=1, log_dir=attacker.dir, run_id=run_id)
    assert not job_processes() or all(h.state == "idle" for h in enb.hosts())
    assert not list(elsewhere.iterdir()), "the job wrote into the other user's directory"
