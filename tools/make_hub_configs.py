#!/usr/bin/env python
"""Regenerate ``hub_configs/<model>/{config.json,README.md}`` for every model timm-ssm-prune registers, and the
README's model table (both from ``timm_ssm_prune/models/facts.py``).

    python tools/make_hub_configs.py            # (re)write the folders and the README table (changed files only)
    python tools/make_hub_configs.py --check    # exit 1 if any folder or the README table is out of date
    python tools/make_hub_configs.py --models plainmamba_l1 vim_mini

The output is deterministic: models are built on the meta device (no weights, nothing downloaded), the config is
timm's ``save_config_for_hf`` output plus the prune configuration, and the model card is rendered by
``timm_ssm_prune.hub.render_model_card`` (the same code ``timm-ssm-prune convert`` uses).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', default=str(ROOT / 'hub_configs'), help='output root (default: hub_configs/)')
    p.add_argument('--models', nargs='*', default=None, help='only these models (default: all registered)')
    p.add_argument('--check', action='store_true', help='compare instead of writing; exit 1 on differences')
    args = p.parse_args(argv)

    os.environ.setdefault('OMP_NUM_THREADS', '1')
    sys.path.insert(0, str(ROOT))
    import torch
    torch.set_num_threads(1)
    from timm_ssm_prune.hub import generate_hub_configs, package_models, update_readme_table

    names = args.models or package_models()
    problems = generate_hub_configs(args.out, names if args.models else None, check=args.check)
    if not args.models and update_readme_table(ROOT / 'README.md', check=args.check):
        problems.append('README.md: the model table differs from models/facts.py')
    if args.check:
        for line in problems:
            print(line, file=sys.stderr)
        if problems:
            print(f"{len(problems)} problem(s); run `python tools/make_hub_configs.py` to regenerate",
                  file=sys.stderr)
            return 1
        print(f"hub_configs up to date for {len(names)} models")
        return 0
    for line in problems:  # stale folders are reported, never deleted
        print(f"warning: {line}", file=sys.stderr)
    print(f"hub_configs: {len(names)} models in {args.out}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
