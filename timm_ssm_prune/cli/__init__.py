"""The ``timm-ssm-prune`` command line (also ``python -m timm_ssm_prune``).

Each subcommand lives in its own module with ``add_arguments(parser)`` and ``run(args) -> int``; only the module of
the subcommand being run is imported (``timm-ssm-prune --help`` itself is answered by ``timm_ssm_prune_cli``
without importing torch). Global flags (``-v``) go before the subcommand and work for every subcommand.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import List, Optional

from ._commands import HELP, SUBCOMMANDS, add_global_args, split_global, top_parser
from .errors import CliError

__all__ = ['main', 'build_parser', 'CliError', 'SUBCOMMANDS']


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The parser; the arguments of ``command`` (default: every subcommand) are added from its module."""
    p = argparse.ArgumentParser(prog='timm-ssm-prune', description='Token pruning for vision SSMs in timm.')
    add_global_args(p)
    sub = p.add_subparsers(dest='command', metavar='COMMAND')
    for name, module in SUBCOMMANDS.items():
        load = command is None or name == command
        sp = sub.add_parser(name, help=HELP[name], description=HELP[name], add_help=load)
        sp.set_defaults(_module=module)
        if not load:
            continue
        try:
            importlib.import_module(f'.{module}', __name__).add_arguments(sp)
        except ModuleNotFoundError as e:  # subcommand not available in this build
            if e.name and e.name.startswith(f'{__name__}.{module}'):
                sp.set_defaults(_missing=True)
            else:
                raise
    return p


def _one_line(text: str) -> str:
    return ' '.join(str(text).split())


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format='%(levelname)s %(name)s: %(message)s')


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    flags, rest = split_global(argv)
    if rest and rest[0] == 'run-timm':  # pass everything after the script through untouched
        _setup_logging(flags.get('verbose', False))
        from . import run_timm
        return run_timm.main(rest[1:])
    if not rest or rest[0] in ('-h', '--help'):
        top_parser().print_help()
        return 0 if rest else 2
    command = rest[0] if rest[0] in SUBCOMMANDS else None
    parser = build_parser(command) if command else top_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    if getattr(args, '_missing', False):
        print(f"timm-ssm-prune: the '{args.command}' subcommand is not available", file=sys.stderr)
        return 2
    module = importlib.import_module(f'.{args._module}', __name__)
    try:
        return int(module.run(args) or 0)
    except CliError as e:
        print(f"timm-ssm-prune {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
