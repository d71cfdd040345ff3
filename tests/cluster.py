"""A small cluster on one machine: Slurm and an SSH host in network namespaces.

``Cluster`` builds five network namespaces, all named with a tag (the pid by
default, as in netns.py): a switch ``enb-switch-TAG`` holding one bridge, and
four hosts, each joined to the bridge by a veth pair, with its loopback up and
a TEST-NET-1 address (RFC 5737: never routed anywhere):

* ``login``   192.0.2.1   the notebook side (a Job) and slurmctld (and munged);
* ``c1``      192.0.2.11  a compute node: slurmd ``-N c1``;
* ``c2``      192.0.2.12  a compute node: slurmd ``-N c2``;
* ``sshhost`` 192.0.2.21  an OpenSSH server (root, key only).

Nothing listens in the root namespace and nothing leaves the machine. The
filesystem is shared (one machine), so a Slurm job or an ssh session runs
``/work/main/.venv/bin/python -m elastic_nb ...`` as a local process would;
only the network (and the hostname: each daemon runs in its own UTS namespace
named after its host, so ``hostname`` in a job on c1 prints ``c1``) differs.
The host names do not resolve: use the addresses.

Every file (munge key and socket, slurm.conf, spool and state, logs, ssh keys,
sshd_config, the client's ssh config and known_hosts) lies in one temporary
directory. Slurm commands need ``SLURM_CONF``: merge ``cluster.slurm_env`` into
their environment and run them inside a namespace (``cluster.login.command``),
since slurmctld listens on 192.0.2.1 only there. ``ssh -F cluster.ssh_config
sshhost CMD`` from a namespace reaches the SSH host.

``close()`` cancels every job, stops the daemons, kills whatever still runs
in the namespaces, deletes them (the veths and the bridge go with them) and
removes the temporary directory; it runs even if ``open()`` failed half way.

Needs root, iproute2's ``ip``, util-linux's ``nsenter``/``unshare``, Slurm,
MUNGE and OpenSSH (``make test`` runs scripts/install-cluster-tools).

Slurm's ``sbatch --signal=SIG@TIME`` warning is checked by slurmctld's
background loop every 30 s (hard-coded, no setting: the man page warns it may
come up to 60 s early); for a prompt signal use ``scancel(job, signal=...)``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import psutil

PREFIX = 24
NETNS_DIR = Path("/var/run/netns")
SSHD = "/usr/sbin/sshd"
TOOLS = ("ip", "nsenter", "unshare", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scancel",
         "munged", "ssh", "ssh-keygen")
START_TIMEOUT = 60.0  # seconds for the daemons to come up, on a loaded 2-core machine


@dataclass(frozen=True)
class Host:
    name: str
    namespace: str
    interface: str
    address: str

    def command(self, *argv: str) -> list[str]:
        """``argv`` run inside this host's network namespace (nothing else changes: a fresh
        /sys, as ``ip netns exec`` mounts, would hide the cgroup mounts slurmd wants)."""
        return ["nsenter", f"--net={NETNS_DIR / self.namespace}", *argv]

    def pids(self) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.namespace], capture_output=True,
                             text=True, check=False).stdout
        return [int(pid) for pid in out.split()]


class QueuedJob(NamedTuple):
    job_id: str
    name: str
    state: str  # PENDING, RUNNING, COMPLETING, ...
    reason: str  # None while running; Resources, Priority, ... while pending
    nodes: str  # the node list: "c1", "c[1-2]"; empty while pending


@dataclass
class _Daemon:
    name: str
    proc: subprocess.Popen
    logs: list[Path] = field(default_factory=list)


class Cluster:
    """``with Cluster() as cluster:`` (or ``open()``/``close()``). ``login``, ``c1``, ``c2``,
    ``sshhost``: the hosts; ``slurm_env``/``env()``: Slurm's environment; ``slurm_conf``,
    ``ssh_config``, ``tmp``: its files; ``slurm()``, ``sbatch()``, ``squeue()``, ``scancel()``,
    ``cancel_all()``, ``job()``, ``wait_for_job()``, ``wait_for_empty_queue()``,
    ``wait_for_idle()``, ``node_states()``: Slurm from the login node; ``daemon_pids()``,
    ``other_pids(host)``: what runs where; ``logs()``: the daemons' log tails."""

    def __init__(self, tag: str | int | None = None) -> None:
        tag = os.getpid() if tag is None else tag
        self.tag = str(tag)
        self.switch = f"enb-switch-{tag}"
        self.login = self._host("login", "192.0.2.1")
        self.c1 = self._host("c1", "192.0.2.11")
        self.c2 = self._host("c2", "192.0.2.12")
        self.sshhost = self._host("sshhost", "192.0.2.21")
        self.hosts = (self.login, self.c1, self.c2, self.sshhost)
        self.nodes = (self.c1, self.c2)
        self.partition = "debug"
        self.tmp: Path | None = None
        self.slurm_conf: Path | None = None
        self.ssh_config: Path | None = None
        self.slurm_env: dict[str, str] = {}
        self.munge_socket: Path | None = None
        self._made: list[str] = []
        self._daemons: list[_Daemon] = []
        self._slurm_up = False  # slurmctld answered: close() cancels the jobs first

    def _host(self, name: str, address: str) -> Host:
        return Host(name, f"enb-{name}-{self.tag}", f"enb-{name}", address)

    @staticmethod
    def unavailable() -> str | None:
        """Why the cluster cannot be built here, or None."""
        if os.geteuid() != 0:
            return "creating network namespaces and running Slurm needs root"
        missing = [tool for tool in TOOLS if _which(tool) is None]
        if not os.access(SSHD, os.X_OK):
            missing.append(SSHD)
        if missing:
            return f"missing {', '.join(missing)} (make test runs scripts/install-cluster-tools)"
        return None

    # -- building and tearing down

    def open(self) -> Cluster:
        try:
            self.tmp = Path(tempfile.mkdtemp(prefix=f"enb-cluster-{self.tag}-"))
            self.tmp.chmod(0o711)  # munged wants its socket's directories searchable by all
            self._network()
            self._munge()
            self._slurm()
            self._sshd()
            self._wait_until_up()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        if self._slurm_up and self._running("slurmctld"):
            try:
                self.cancel_all()
                self.wait_for_empty_queue(timeout=10)
            except (subprocess.SubprocessError, RuntimeError, TimeoutError, OSError):
                pass  # the daemons are about to go anyway, and the namespaces swept
        for daemon in reversed(self._daemons):  # sshd, the slurmds, slurmctld, then munged
            if daemon.proc.poll() is None:
                daemon.proc.terminate()
        deadline = time.monotonic() + 10
        for daemon in self._daemons:
            try:
                daemon.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                daemon.proc.kill()
                daemon.proc.wait()
        self._daemons.clear()
        self._slurm_up = False
        for namespace in self._made:
            for pid in _netns_pids(namespace):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            subprocess.run(["ip", "netns", "del", namespace], check=False)
        self._made.clear()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def __enter__(self) -> Cluster:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _network(self) -> None:
        for namespace in (self.switch, *(host.namespace for host in self.hosts)):
            _ip("netns", "add", namespace)
            self._made.append(namespace)
            _ip("-n", namespace, "link", "set", "lo", "up")
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for host in self.hosts:
            # both ends are made inside their namespaces: the root namespace never sees them
            _ip("link", "add", host.interface, "netns", host.namespace, "type", "veth",
                "peer", "name", host.name, "netns", self.switch)
            _ip("-n", self.switch, "link", "set", host.name, "master", "br0", "up")
            _ip("-n", host.namespace, "addr", "add", f"{host.address}/{PREFIX}",
                "dev", host.interface)
            _ip("-n", host.namespace, "link", "set", host.interface, "up")

    def _start(self, name: str, host: Host, argv: list[str], logs: Sequence[Path] = (),
               env: dict[str, str] | None = None) -> None:
        """Start a daemon in the foreground in ``host``'s network namespace and a UTS namespace
        of its own whose hostname is the host's name (as on a real cluster)."""
        assert self.tmp is not None
        out = self.tmp / f"{name}.out"
        command = host.command("unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"',
                               host.name, *argv)
        with open(out, "wb") as sink:
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=sink,
                                    stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                    start_new_session=True)
        self._daemons.append(_Daemon(name, proc, [out, *logs]))

    def _munge(self) -> None:
        """One munged for the whole cluster: its Unix socket is a path in the shared filesystem,
        reachable from every network namespace."""
        assert self.tmp is not None
        munge = self.tmp / "munge"
        munge.mkdir(mode=0o711)  # munged wants others to reach its socket
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        socket = self.munge_socket = munge / "munge.socket"
        log = munge / "munged.log"
        self._start("munged", self.login, [
            _tool("munged"), "--foreground", "--force", f"--socket={self.munge_socket}",
            f"--key-file={key}", f"--pid-file={munge / 'munged.pid'}", f"--log-file={log}",
            f"--seed-file={munge / 'munged.seed'}"])  # in the foreground it logs to stderr
        _wait(socket.is_socket, "munged's socket", self._daemons[-1:])

    def _slurm(self) -> None:
        assert self.tmp is not None and self.munge_socket is not None
        tmp = self.tmp
        (tmp / "state").mkdir()
        for host in self.nodes:
            (tmp / "spool" / host.name).mkdir(parents=True)
        nodes = ",".join(host.name for host in self.nodes)
        lines = [
            "ClusterName=enb",
            f"SlurmctldHost={self.login.name}({self.login.address})",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={tmp / 'state'}",
            f"SlurmdSpoolDir={tmp / 'spool' / '%n'}",
            f"SlurmctldPidFile={tmp / 'slurmctld.pid'}",
            f"SlurmdPidFile={tmp / 'spool' / '%n' / 'slurmd.pid'}",
            f"SlurmctldLogFile={tmp / 'slurmctld.log'}",
            f"SlurmdLogFile={tmp / 'slurmd-%n.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "MpiDefault=none",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "SelectType=select/linear",
            "SchedulerType=sched/builtin",
            "ReturnToService=2",
            # use the configured CPUs whatever the machine has (CI's may have fewer)
            "SlurmdParameters=config_overrides",
            "SlurmdTimeout=30",
            "MessageTimeout=5",
            "KillWait=2",
            "InactiveLimit=0",
            "MinJobAge=60",
            "Waittime=0",
            *(f"NodeName={host.name} NodeAddr={host.address} CPUs=2 State=UNKNOWN"
              for host in self.nodes),
            f"PartitionName={self.partition} Nodes={nodes} Default=YES MaxTime=INFINITE State=UP",
        ]
        self.slurm_conf = tmp / "slurm.conf"
        self.slurm_conf.write_text("\n".join(lines) + "\n")
        self.slurm_env = {"SLURM_CONF": str(self.slurm_conf)}
        self._start("slurmctld", self.login, [_tool("slurmctld"), "-D"],
                    [tmp / "slurmctld.log"], self.slurm_env)
        for host in self.nodes:
            self._start(f"slurmd-{host.name}", host, [_tool("slurmd"), "-D", "-N", host.name],
                        [tmp / f"slurmd-{host.name}.log"], self.slurm_env)

    def _sshd(self) -> None:
        assert self.tmp is not None
        ssh = self.tmp / "ssh"
        ssh.mkdir(mode=0o700)
        host_key, client_key = ssh / "host_ed25519", ssh / "client_ed25519"
        for key in (host_key, client_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", key.name,
                            "-f", str(key)], check=True, capture_output=True)
        authorized = ssh / "authorized_keys"
        shutil.copyfile(client_key.with_suffix(".pub"), authorized)
        authorized.chmod(0o600)
        known_hosts = ssh / "known_hosts"
        host_public = host_key.with_suffix(".pub").read_text().split()
        known_hosts.write_text(f"{self.sshhost.name},{self.sshhost.address} "
                               f"{host_public[0]} {host_public[1]}\n")
        sshd_config = ssh / "sshd_config"
        sshd_config.write_text("\n".join([
            f"ListenAddress {self.sshhost.address}",
            "Port 22",
            f"HostKey {host_key}",
            f"AuthorizedKeysFile {authorized}",
            f"PidFile {ssh / 'sshd.pid'}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "UseDNS no",
            "PrintMotd no",
        ]) + "\n")
        self.ssh_config = ssh / "config"
        self.ssh_config.write_text("\n".join([
            f"Host {self.sshhost.name}",
            f"    HostName {self.sshhost.address}",
            "    User root",
            f"    IdentityFile {client_key}",
            "    IdentitiesOnly yes",
            f"    UserKnownHostsFile {known_hosts}",
            "    GlobalKnownHostsFile /dev/null",
            "    StrictHostKeyChecking yes",
            "    BatchMode yes",
            "    ConnectTimeout 5",
            "    LogLevel ERROR",
        ]) + "\n")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        self._start("sshd", self.sshhost, [SSHD, "-D", "-e", "-f", str(sshd_config)])

    def _wait_until_up(self) -> None:
        self.wait_for_idle(START_TIMEOUT)
        self._slurm_up = True
        _wait(self._ssh_ready, "sshd to accept connections", self._daemons)

    def _ssh_ready(self) -> bool:
        try:
            probe = subprocess.run(self.login.command("ssh", "-F", str(self.ssh_config),
                                                      self.sshhost.name, "true"),
                                   capture_output=True, check=False, timeout=15)
        except subprocess.TimeoutExpired:
            return False
        return probe.returncode == 0

    def _running(self, name: str) -> bool:
        return any(d.name == name and d.proc.poll() is None for d in self._daemons)

    # -- for the tests

    def daemon_pids(self) -> set[int]:
        """The fixture's own daemons: munged, slurmctld (and its slurmscriptd), the slurmds,
        sshd (not the sshd serving a connection, nor a job's slurmstepd)."""
        pids = {d.proc.pid for d in self._daemons if d.proc.poll() is None}
        for pid in list(pids):
            try:
                pids.update(child.pid for child in psutil.Process(pid).children()
                            if child.name() == "slurmscriptd")
            except psutil.Error:
                continue
        return pids

    def other_pids(self, host: Host) -> list[int]:
        """What runs in ``host``'s namespace but the fixture's daemons: jobs, their slurmstepd,
        ssh sessions, a test's own processes. Empty between tests."""
        daemons = self.daemon_pids()
        return [pid for pid in host.pids() if pid not in daemons]

    def env(self, **extra: str) -> dict[str, str]:
        """os.environ with ``slurm_env`` (and ``extra``) merged in."""
        return {**os.environ, **self.slurm_env, **extra}

    def slurm(self, *argv: str, check: bool = True, timeout: float = 30,
              host: Host | None = None, env: dict[str, str] | None = None,
              ) -> subprocess.CompletedProcess[str]:
        """Run a Slurm command (sbatch, squeue, scontrol...) in the login namespace (or
        ``host``'s), with ``SLURM_CONF`` (and ``env``) added to os.environ; raise with its
        stderr if it fails and ``check``."""
        result = subprocess.run((host or self.login).command(*argv), capture_output=True,
                                text=True, env=self.env(**(env or {})), timeout=timeout,
                                check=False)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}: "
                               f"{result.stderr.strip()}")
        return result

    def sbatch(self, *argv: str, env: dict[str, str] | None = None) -> str:
        """``sbatch --parsable ARGV`` from the login namespace; the job id. The job gets this
        environment (sbatch's --export=ALL) with ``env`` added. Pass ``--output``: by default
        sbatch writes slurm-JOBID.out in the current directory."""
        return self.slurm("sbatch", "--parsable", *argv, env=env).stdout.strip().split(";")[0]

    def node_states(self) -> dict[str, str]:
        """sinfo's state of each node: idle, allocated, down, drained..."""
        out = self.slurm("sinfo", "-h", "-N", "-o", "%N %T", timeout=10).stdout
        return dict(line.split() for line in out.splitlines() if line.strip())

    def wait_for_idle(self, timeout: float = 30) -> None:
        """Wait until every compute node is idle."""
        def idle() -> bool:
            try:
                states = self.node_states()
            except (subprocess.SubprocessError, RuntimeError):
                return False  # slurmctld not answering yet
            return all(states.get(host.name) == "idle" for host in self.nodes)

        _wait(idle, "every compute node idle in sinfo", self._daemons, timeout)

    def squeue(self) -> list[QueuedJob]:
        """Jobs in the queue (pending, running, completing...): (id, name, state, reason, nodes)."""
        out = self.slurm("squeue", "-h", "-o", "%i|%T|%r|%N|%j").stdout
        jobs = []
        for line in out.splitlines():
            if line.strip():
                job_id, state, reason, nodes, name = line.split("|", 4)
                jobs.append(QueuedJob(job_id, name, state, reason, nodes))
        return jobs

    def scancel(self, job_id: str | int, signal: str | int | None = None,
                batch: bool = False) -> None:
        """Cancel a job, or with ``signal`` send it that signal (to its steps, or with
        ``batch`` to its batch shell only); at once, unlike ``sbatch --signal``."""
        argv = ["scancel"]
        if signal is not None:
            argv.append(f"--signal={signal}")
        if batch:
            argv.append("--batch")
        self.slurm(*argv, str(job_id))

    def cancel_all(self) -> None:
        """Cancel every job in the queue (they all run as root)."""
        self.slurm("scancel", "--user", "root", timeout=10)

    def job(self, job_id: str | int) -> dict[str, str]:
        """``scontrol show job``'s fields (JobState, ExitCode, NodeList, Reason...); a finished
        job stays known for MinJobAge (60 s)."""
        out = self.slurm("scontrol", "show", "job", "-o", str(job_id)).stdout
        fields: dict[str, str] = {}
        for item in out.split():
            key, _, value = item.partition("=")
            fields.setdefault(key, value)
        return fields

    def wait_for_job(self, job_id: str | int, timeout: float = 30) -> dict[str, str]:
        """Wait until the job has ended (left the queue); its ``job()`` fields."""
        _wait(lambda: not any(j.job_id == str(job_id) for j in self.squeue()),
              f"job {job_id} to end", self._daemons, timeout)
        return self.job(job_id)

    def wait_for_empty_queue(self, timeout: float = 30) -> None:
        _wait(lambda: not self.squeue(), "the Slurm queue to empty", self._daemons, timeout)

    def logs(self, lines: int = 40) -> str:
        """The tail of every daemon's logs (for a failure message)."""
        return _tails(self._daemons, lines)


def _which(tool: str) -> str | None:
    return shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin")


def _tool(name: str) -> str:
    path = _which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed (make test runs scripts/install-cluster-tools)")
    return path


def _netns_pids(namespace: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True,
                         check=False).stdout
    return [int(pid) for pid in out.split()]


def _ip(*argv: str) -> None:
    result = subprocess.run(["ip", *argv], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(argv)}: {result.stderr.strip()}")


def _tails(daemons: list[_Daemon], lines: int = 40) -> str:
    parts = []
    for daemon in daemons:
        state = "running" if daemon.proc.poll() is None else f"exited {daemon.proc.returncode}"
        parts.append(f"== {daemon.name} ({state})")
        for log in daemon.logs:
            try:
                text = log.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            parts.append(f"-- {log.name}\n" + "\n".join(text))
    return "\n".join(parts)


def _wait(condition: Callable[[], object], what: str, daemons: list[_Daemon],
          timeout: float = START_TIMEOUT) -> None:
    """Poll ``condition`` until true; raise with the daemons' logs if one of them exits or
    ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        dead = [d.name for d in daemons if d.proc.poll() is not None]
        if dead:
            raise RuntimeError(f"waiting for {what}: {', '.join(dead)} exited\n{_tails(daemons)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout:.0f} s\n{_tails(daemons)}")
        time.sleep(0.2)
