"""Terminal entry point: ``python -m elastic_nb demo``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m elastic_nb",
                                     description="Run, watch and break PyTorch elastic jobs.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="4 ranks, live prefixed logs, a rank killed, the group restarted")
    demo.add_argument("--nproc", type=int, default=4)
    demo.add_argument("--kill-rank", type=int, default=3)
    args = parser.parse_args(argv)
    if args.command == "demo":
        from elastic_nb.demo import run_demo

        if not 0 <= args.kill_rank < args.nproc:
            parser.error(f"--kill-rank must be between 0 and {args.nproc - 1}")
        run_demo(args.nproc, args.kill_rank)
    return 0


if __name__ == "__main__":
    sys.exit(main())
