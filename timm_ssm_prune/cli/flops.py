"""`timm-ssm-prune flops`: per-stage token counts and GFLOPs."""
import json

from ..flops import SCAN_CONVENTIONS, flops_breakdown
from .common import add_model_args, create_model_from_args


def add_arguments(p):
    add_model_args(p)
    p.add_argument('--convention', default=None, choices=sorted(SCAN_CONVENTIONS),
                   help="scan FLOPs convention (default: the model family's published one)")
    p.add_argument('--dense', action='store_true', help='also report the model without pruning')
    p.add_argument('--json', action='store_true', help='print JSON')


def report(model, input_size, convention=None):
    cfg = model.prune_cfg
    counts = model.token_counts()
    extra = 1 if hasattr(model, 'cls_token') else 0
    bd = flops_breakdown(model, input_size, convention)
    stages = [dict(after_block=s.after_block, keep_rate=s.keep_rate, tokens_before=counts[i] + extra,
                   tokens_after=counts[i + 1] + extra) for i, s in enumerate(cfg.stages)]
    return dict(model=model.pretrained_cfg.get('architecture', type(model).__name__), input_size=list(input_size),
                depth=len(model.layers), tokens=counts[0] + extra, pruning=cfg.describe(), stages=stages,
                gflops=bd['total'], gflops_linear_conv=bd['linear_conv'], gflops_scan=bd['scan'],
                convention=bd['convention'])


def run(args):
    model = create_model_from_args(args)
    input_size = (model.in_chans, *model.img_size)
    out = report(model, input_size, args.convention)
    if args.dense:
        saved = model.prune_cfg
        model.set_pruning()
        dense = report(model, input_size, args.convention)
        model.prune_cfg = saved
        out['dense_gflops'] = dense['gflops']
        out['flops_reduction'] = 1 - out['gflops'] / dense['gflops']
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{out['model']}  input {tuple(input_size)}  depth {out['depth']}  tokens {out['tokens']}")
    print(f"pruning: {out['pruning']}")
    for s in out['stages']:
        print(f"  after block {s['after_block']:3d}: keep {s['keep_rate']:.4g}  tokens {s['tokens_before']} -> "
              f"{s['tokens_after']}")
    print(f"GFLOPs ({out['convention']} convention): {out['gflops']:.3f}  "
          f"(linear/conv {out['gflops_linear_conv']:.3f}, scan {out['gflops_scan']:.3f})")
    if args.dense:
        print(f"dense GFLOPs: {out['dense_gflops']:.3f}  reduction: {100 * out['flops_reduction']:.1f} %")
    return 0
