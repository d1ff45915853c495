"""`timm-ssm-prune run-timm SCRIPT [ARGS...]`: run timm's own train.py / validate.py / benchmark.py (or any script)
with this package's models registered.

pip's timm ships no scripts; take them from a checkout of github.com/huggingface/pytorch-image-models at the tag
matching the installed timm (``git clone -b v$(python -c 'import timm; print(timm.__version__)') ...``). Our
models then work with every flag of those scripts, e.g.

    timm-ssm-prune run-timm pytorch-image-models/validate.py --model plainmamba_l1_pruned --pretrained \\
        --data-dir /imagenet --model-kwargs keep_rate=0.5
"""
import runpy
import sys
from pathlib import Path


def add_arguments(p):
    p.add_argument('script', help="path to timm's train.py / validate.py / benchmark.py")
    p.add_argument('args', nargs='*', help='arguments passed to the script unchanged')


def main(argv) -> int:
    if not argv or argv[0] in ('-h', '--help'):
        print(__doc__)
        return 0 if argv else 2
    script = Path(argv[0])
    if not script.is_file():
        print(f"timm-ssm-prune run-timm: error: script not found: {script}\n"
              f"(pip's timm has no train.py/validate.py/benchmark.py: clone pytorch-image-models at the tag of the "
              f"installed timm and pass the script's path)", file=sys.stderr)
        return 2
    import timm_ssm_prune  # noqa: F401  (registers the models before the script creates one)
    saved = sys.argv, list(sys.path)
    sys.argv = [str(script)] + list(argv[1:])
    sys.path.insert(0, str(script.resolve().parent))
    try:
        runpy.run_path(str(script), run_name='__main__')
    except SystemExit as e:  # scripts end with sys.exit / argparse errors
        code = e.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        sys.argv, sys.path[:] = saved
    return 0


def run(args):  # reached only through build_parser(); `main` handles the command line directly
    return main([args.script] + list(args.args))
