"""The subcommand table and the global flags of ``timm-ssm-prune``: standard library only.

``timm_ssm_prune_cli`` (the console script's entry point) loads this file without importing the package, so that
``timm-ssm-prune --help`` answers without importing torch or timm.
"""
import argparse
from typing import List, Tuple

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
    'export': 'export',
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
    'export': 'ONNX file with a dynamic batch (dense or pruned), checked against PyTorch with onnxruntime',
}

PROG = 'timm-ssm-prune'
DESCRIPTION = 'Token pruning for vision SSMs in timm.'
GLOBAL_FLAGS = {'-v': 'verbose', '--verbose': 'verbose'}


def add_global_args(p: argparse.ArgumentParser) -> None:
    p.add_argument('-v', '--verbose', action='store_true', help='log at INFO level (any subcommand)')


def split_global(argv: List[str]) -> Tuple[dict, List[str]]:
    """Global flags given before the subcommand, and the rest of ``argv`` (starting at the subcommand)."""
    flags = {}
    i = 0
    while i < len(argv) and argv[i] in GLOBAL_FLAGS:
        flags[GLOBAL_FLAGS[argv[i]]] = True
        i += 1
    return flags, argv[i:]


def top_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand listed (no subcommand's arguments: those load on use)."""
    p = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION)
    add_global_args(p)
    sub = p.add_subparsers(dest='command', metavar='COMMAND')
    for name in SUBCOMMANDS:
        sub.add_parser(name, help=HELP[name], description=HELP[name], add_help=False)
    return p


def wants_top_help(argv: List[str]) -> bool:
    """True when ``argv`` asks for the top-level help only (no subcommand before -h/--help, or nothing at all)."""
    _, rest = split_global(argv)
    return not rest or rest[0] in ('-h', '--help')
