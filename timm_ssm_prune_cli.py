"""Entry point of the ``timm-ssm-prune`` console script.

A top-level module on purpose: importing anything inside ``timm_ssm_prune`` runs the package's ``__init__``, which
registers the models with timm (torch + timm: seconds). ``timm-ssm-prune --help`` is answered from
``timm_ssm_prune/cli/_commands.py`` (standard library only), loaded by path; everything else goes to
``timm_ssm_prune.cli.main``.
"""
import importlib.util
import os
import sys


def _commands():
    spec = importlib.util.find_spec('timm_ssm_prune')  # locates the package without running its __init__
    path = os.path.join(list(spec.submodule_search_locations)[0], 'cli', '_commands.py')
    mod_spec = importlib.util.spec_from_file_location('_timm_ssm_prune_cli_commands', path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cmds = _commands()
    except Exception:  # unusual install layout: take the slow path
        cmds = None
    if cmds is not None and cmds.wants_top_help(argv):
        p = cmds.top_parser()
        p.print_help()
        return 0 if argv else 2
    from timm_ssm_prune.cli import main as cli_main
    return cli_main(argv)


if __name__ == '__main__':
    sys.exit(main())
