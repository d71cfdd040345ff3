"""Terminal entry point: ``python -m elastic_nb demo`` and ``python -m elastic_nb join``."""

from __future__ import annotations

import argparse
import os
import sys

from elastic_nb.wire.options import BACKENDS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m elastic_nb",
                                     description="Run, watch and break PyTorch elastic jobs.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="4 ranks, live prefixed logs, a rank killed, the group restarted")
    demo.add_argument("--nproc", type=int, default=4)
    demo.add_argument("--kill-rank", type=int, default=3)
    join = commands.add_parser("join", help="run a node of a job launched elsewhere (e.g. a notebook)")
    join.add_argument("--backend", required=True, choices=BACKENDS)
    join.add_argument("--endpoint", required=True, help="the rendezvous endpoint, HOST:PORT")
    join.add_argument("--run-id", required=True)
    join.add_argument("--nproc", type=int, required=True, help="workers on this node")
    join.add_argument("--role", default="default")
    join.add_argument("--local-addr", default=None, help="this node's address as others reach it")
    join.add_argument("--log-dir", default=None)
    join.add_argument("--rdzv-conf", action="append", default=[], metavar="KEY=VALUE",
                      help="rendezvous options, e.g. cacert=ca.pem user=root password=...")
    join.add_argument("--timeout", type=float, default=60, help="seconds to find the job")
    join.add_argument("--key-file", default=None,
                      help="the job's key (job.join_command() names it): run only what the job "
                           "signed")
    join.add_argument("--key-stdin", action="store_true",
                      help="read the job's key from the first line of standard input")
    join.add_argument("--job-address", default=None, help=argparse.SUPPRESS)
    join.add_argument("--ticket", type=int, default=-1, help=argparse.SUPPRESS)
    join.add_argument("--leave-on", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.command == "demo":
        from elastic_nb.ui.demo import run_demo

        if not 0 <= args.kill_rank < args.nproc:
            parser.error(f"--kill-rank must be between 0 and {args.nproc - 1}")
        run_demo(args.nproc, args.kill_rank)
    elif args.command == "join":
        from elastic_nb.node.join import JoinError
        from elastic_nb.node.join import join as join_job

        if args.nproc < 1:
            parser.error("--nproc must be >= 1")
        bad = [item for item in args.rdzv_conf if "=" not in item]
        if bad:
            parser.error(f"--rdzv-conf takes KEY=VALUE, not {bad[0]!r}")
        try:
            key, private_configs = _private_inputs(args)
            configs = {**private_configs, **dict(item.split("=", 1) for item in args.rdzv_conf)}
            return join_job(args.backend, args.endpoint, args.run_id, args.nproc, args.role,
                            args.local_addr, args.log_dir, configs, args.timeout,
                            key, args.job_address, args.ticket, args.leave_on)
        except (JoinError, ValueError, OSError) as exc:
            print(f"elastic_nb join: {exc}", file=sys.stderr)
            return 2
    return 0


def _private_inputs(args: argparse.Namespace) -> tuple[str | None, dict[str, str]]:
    """The job's key and its rendezvous configs, as the notebook passed them privately: from
    ``--key-file``, standard input (the key, then the configs as JSON), or the environment
    a scheduler passed (taken out of it: the workers do not inherit them)."""
    from elastic_nb.wire import auth

    from_env = os.environ.pop(auth.KEY_ENV, None)
    configs_env = os.environ.pop(auth.RDZV_CONF_ENV, "")
    if args.key_file:
        return auth.read_key_file(args.key_file), {}
    if args.key_stdin:
        key = auth.read_key_line(sys.stdin.readline(), "standard input")
        return key, auth.read_rdzv_configs(sys.stdin.readline(), "standard input")
    if not from_env:
        return None, {}
    return (auth.read_key_line(from_env, f"${auth.KEY_ENV}"),
            auth.read_rdzv_configs(configs_env, f"${auth.RDZV_CONF_ENV}"))


if __name__ == "__main__":
    sys.exit(main())
