"""Diagnostic: where should Vim's class token sit after pruning?

The package (as docs/method.md §3 and the paper's code) re-inserts the class token exactly in the middle of the kept
sequence. This script compares that with keeping it at its original raster place (between the kept patches
whose raster index is below and above the dense middle), on the shipped vim_mini, zero-shot, on the
Animal-MNIST val split. It re-runs the model's own blocks sample by sample (the class token's place differs per
sample), so it is slow and a diagnostic only; the 'mid' column must equal the model's own pruned forward.

    python benchmarks/vim_cls_position.py --prune-layers 2 3 4 --keep-rate 0.753
"""
import argparse

import torch
import timm
from timm.data import create_dataset, create_transform, resolve_data_config

import timm_ssm_prune  # noqa: F401  (registers the models)
from timm_ssm_prune.data import prepare_animal_mnist
from timm_ssm_prune.models.vim import split_cls
from timm_ssm_prune.pruning import keep_count, select_tokens, token_importance


def run_sample(m, x, stages, metric, mode, shifts=None):
    """Logits of one image (1, C, H, W) with pruning after the blocks in ``stages``; appends to ``shifts`` how
    far (in tokens) the raster place is from the middle after each stage."""
    h, layout = m._embed(x)
    r = None
    n = layout.num_patches
    mid = n // 2                      # dense class-token index (raster split point)
    idx = torch.arange(n)             # raster index of each kept patch, in sequence order
    p = mid                           # current class-token index in the sequence
    for i, layer in enumerate(m.layers):
        h, r, ssm = layer(h, r, None, (i + 1) in stages)
        if (i + 1) in stages:
            k = keep_count(len(idx), stages[i + 1])
            keep = select_tokens(token_importance(split_cls(ssm, p)[0], metric), k, keep_order=True)[0]
            idx = idx[keep]
            raster_p = int((idx < mid).sum())
            new_p = k // 2 if mode == 'mid' else raster_p
            if shifts is not None:
                shifts.append(abs(raster_p - k // 2))

            def take(t):
                patches, cls = split_cls(t, p)
                patches = patches[:, keep]
                return torch.cat([patches[:, :new_p], cls, patches[:, new_p:]], 1)
            h, r, p = take(h), take(r), new_p
    return m.head(m._final(h, r)[:, p])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--prune-layers', type=int, nargs='+', default=[2, 3, 4])
    ap.add_argument('--keep-rate', type=float, default=0.753)
    ap.add_argument('--importance', default='clip')
    ap.add_argument('--limit', type=int, default=None,
                    help='evaluate N val images spread evenly over the split (sorted by class)')
    args = ap.parse_args()
    stages = {b: args.keep_rate for b in args.prune_layers}
    root = prepare_animal_mnist()
    m = timm.create_model('vim_mini', pretrained=True).eval()
    ref = timm.create_model('vim_mini', pretrained=True, prune_layers=tuple(args.prune_layers),
                            keep_rate=args.keep_rate, importance=args.importance).eval()
    ds = create_dataset('', root=str(root), split='val', transform=create_transform(**resolve_data_config({}, model=m)))
    n = len(ds) if args.limit is None else min(args.limit, len(ds))
    correct = dict(model=0, mid=0, raster=0)
    shifts = []
    with torch.no_grad():
        for j in torch.linspace(0, len(ds) - 1, n).round().long().tolist():
            x, y = ds[j]
            x = x[None, :1]  # grey PNG read as RGB: the channels are equal
            torch.manual_seed(j)
            correct['model'] += int(ref(x).argmax(-1).item() == y)
            for mode in ('mid', 'raster'):
                torch.manual_seed(j)
                logits = run_sample(m, x, stages, args.importance, mode, shifts if mode == 'raster' else None)
                correct[mode] += int(logits.argmax(-1).item() == y)
    pct = {k: 100 * v / n for k, v in correct.items()}
    print(f"vim_mini, prune after {args.prune_layers} keep {args.keep_rate} ({args.importance}), {n} val images: "
          f"model {pct['model']:.2f} | class token mid {pct['mid']:.2f} | at its raster place {pct['raster']:.2f} | "
          f"mean |raster place - middle| {sum(shifts) / max(len(shifts), 1):.2f} tokens")


if __name__ == '__main__':
    main()
