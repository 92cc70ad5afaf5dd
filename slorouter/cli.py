"""``slorouter`` command line. Each subcommand lives in its own module exposing
``add_arguments(parser)`` and ``run(args) -> int``; modules are imported lazily so
that ``slorouter --help`` stays fast."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("slorouter.tools.serve_cmd", "start the router (reverse proxy) from a YAML config"),
    "sim": ("slorouter.sim.cli", "serve simulated vLLM/TGI engines on consecutive ports"),
    "simulate": ("slorouter.sim.fleet_cli", "run a policy offline on a simulated fleet (no HTTP)"),
    "profile": ("slorouter.tools.profile", "sweep a running backend and write a latency profile"),
    "config": ("slorouter.tools.config_cmd", "check a config file, or print its JSON Schema"),
    "scaler-sim": (
        "slorouter.tools.scaler_sim",
        "receive the router's scaling webhooks: start/stop simulated engines and register them",
    ),
}


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slorouter", description="Multi-SLO router for LLM inference.")
    parser.add_argument("--version", action="version", version="slorouter 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = next((a for a in argv if a in COMMANDS), None)
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == wanted:
            mod = importlib.import_module(module)
            mod.add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(args_list)
    args = parser.parse_args(args_list)
    if not args.command:
        parser.print_help()
        return 2
    mod = importlib.import_module(COMMANDS[args.command][0])
    try:
        code: int = mod.run(args)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
