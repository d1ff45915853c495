"""`timm-ssm-prune models`: the models this package registers, with their pretrained tags."""
import timm

import timm_ssm_prune  # noqa: F401


def add_arguments(p):
    p.add_argument('filter', nargs='?', default='*', help='wildcard, e.g. "*pruned"')


def registered_models(pattern: str = '*'):
    names = set(timm.list_models(pattern, module='plainmamba')) | set(timm.list_models(pattern, module='vim'))
    return sorted(names)


def run(args):
    for name in registered_models(args.filter):
        tags = timm.list_pretrained(f'{name}.*')
        print(f"{name:34s} {' '.join(t.split('.', 1)[1] for t in tags)}")
    return 0
