"""The ``timm-ssm-prune`` command line (also ``python -m timm_ssm_prune``).

Each subcommand lives in its own module with ``add_arguments(parser)`` and ``run(args) -> int``; modules are
imported only when their subcommand runs, so ``timm-ssm-prune --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import List, Optional

from .common import CliError

SUBCOMMANDS = {
    'demo': 'demo',
    'validate': 'validate',
    'train': 'train',
    'benchmark': 'benchmark',
    'flops': 'flops',
    'visualize': 'visualize',
    'models': 'models',
    'run-timm': 'run_timm',
    'convert': 'convert',
    'push': 'push',
}

HELP = {
    'demo': 'the main job: dense vs ToP vs naive pruning on Animal-MNIST with the shipped weights',
    'validate': 'top-1/top-5, loss and images/s on an ImageFolder split (JSON result)',
    'train': 'train or fine-tune (optionally distilling from the dense teacher; runs under torchrun/DDP)',
    'benchmark': 'dense vs pruned throughput, latency, peak memory and GFLOPs in one run',
    'flops': 'per-stage token counts and GFLOPs of a model',
    'visualize': 'PNG of images with the tokens kept at each pruning stage',
    'models': 'list the models this package registers',
    'run-timm': "run timm's own train.py / validate.py / benchmark.py with this package's models registered",
    'convert': 'official checkpoint -> model.safetensors + config.json + model card (verified)',
    'push': 'upload a converted model folder to the Hugging Face Hub',
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='timm-ssm-prune', description='Token pruning for vision SSMs in timm.')
    p.add_argument('-v', '--verbose', action='store_true')
    sub = p.add_subparsers(dest='command', metavar='COMMAND')
    for name, module in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=HELP[name], description=HELP[name])
        sp.set_defaults(_module=module)
        try:
            importlib.import_module(f'.{module}', __name__).add_arguments(sp)
        except ModuleNotFoundError:  # subcommand not available in this build
            sp.set_defaults(_missing=True)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == 'run-timm':  # pass everything after the script through untouched
        from . import run_timm
        return run_timm.main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format='%(levelname)s %(name)s: %(message)s')
    if not args.command:
        parser.print_help()
        return 2
    if getattr(args, '_missing', False):
        print(f"timm-ssm-prune: the '{args.command}' subcommand is not available", file=sys.stderr)
        return 2
    module = importlib.import_module(f'.{args._module}', __name__)
    try:
        return int(module.run(args) or 0)
    except CliError as e:
        print(f"timm-ssm-prune {args.command}: error: {e}", file=sys.stderr)
        return 2
