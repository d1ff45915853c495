"""`timm-ssm-prune visualize`: a PNG of images with the tokens kept at each pruning stage."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..pruning import kept_masks, trace_kept_tokens
from .common import (CliError, add_data_args, add_model_args, add_seed_arg, create_eval_loader,
                     create_model_from_args, seed_forward)


def add_arguments(p):
    add_model_args(p)
    add_data_args(p, split='val')
    p.add_argument('--num-images', type=int, default=8)
    p.add_argument('--scale', type=int, default=0, help='pixels per image side in the picture (default: auto)')
    p.add_argument('--output', '-o', default='kept_tokens.png')
    add_seed_arg(p)


def _to_uint8(img: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    x = img.float().cpu() * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    x = (x.clamp(0, 1) * 255).round().byte()
    x = x.permute(1, 2, 0).numpy()
    return np.repeat(x, 3, axis=2) if x.shape[2] == 1 else x[..., :3]


@torch.inference_mode()
def render_kept_tokens(model, images: torch.Tensor, mean, std, path, scale: int = 0,
                       titles: Optional[List[str]] = None) -> Path:
    """Write a PNG: one row per image; columns: the input, then the image with pruned tokens darkened after each
    stage (red grid lines mark the token cells). Returns the path."""
    model.eval()
    with trace_kept_tokens(model) as record:
        model(images)
    gh, gw = model.grid_size
    masks = kept_masks(record, images.shape[0], gh * gw)  # (S, B, T)
    h, w = images.shape[-2:]
    scale = scale or max(1, 160 // max(h, w))
    cell_h, cell_w = h * scale / gh, w * scale / gw
    cols = 1 + masks.shape[0]
    pad, top = 4, 16
    W = cols * (w * scale + pad) + pad
    H = top + images.shape[0] * (h * scale + pad) + pad
    canvas = Image.new('RGB', (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    heads = ['input'] + [f"after block {s.after_block}" for s in model.prune_cfg.stages][:masks.shape[0]]
    for c, text in enumerate(heads):
        draw.text((pad + c * (w * scale + pad), 2), text, fill=(0, 0, 0))
    for b in range(images.shape[0]):
        base = Image.fromarray(_to_uint8(images[b], mean, std)).resize((w * scale, h * scale), Image.NEAREST)
        y0 = top + b * (h * scale + pad)
        canvas.paste(base, (pad, y0))
        for s in range(masks.shape[0]):
            arr = np.asarray(base).astype(np.float32)
            alive = masks[s, b].view(gh, gw).numpy()
            for r in range(gh):
                for c in range(gw):
                    if not alive[r, c]:
                        ys, xs = int(round(r * cell_h)), int(round(c * cell_w))
                        ye, xe = int(round((r + 1) * cell_h)), int(round((c + 1) * cell_w))
                        arr[ys:ye, xs:xe] = arr[ys:ye, xs:xe] * 0.2 + np.array([40, 40, 90]) * 0.8
            tile = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
            canvas.paste(tile, (pad + (s + 1) * (w * scale + pad), y0))
            kept = int(masks[s, b].sum())
            draw.text((pad + (s + 1) * (w * scale + pad) + 2, y0 + 2), f"{kept}/{gh * gw}", fill=(255, 60, 60))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def run(args):
    model = create_model_from_args(args)
    if not model.prune_cfg.enabled:
        raise CliError(f"{args.model} does not prune tokens; use a *_pruned model or --model-kwargs "
                       f"prune_layers=... keep_rate=...")
    loader, cfg = create_eval_loader(args, model, batch_size=args.num_images)
    images, _ = next(iter(loader))
    seed_forward(args)
    out = render_kept_tokens(model, images[:args.num_images], cfg['mean'], cfg['std'], args.output, args.scale)
    print(f"wrote {out}" + (f" (seed {args.seed})" if args.seed is not None else ''))
    return 0
