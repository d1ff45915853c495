"""Train a deep "testbed" Vim / PlainMamba on Animal-MNIST from scratch, resumably across sessions (issue 13).

The testbeds look like the real models in depth and token count: 12 blocks (the minis have 6), width 32, a 14x14
token grid on 28x28 grey Animal-MNIST (stride 2, as ImageNet at 224/16). They are built with the package's mini
models and kwargs, so their state-dict keys are the minis' ones:

    timm.create_model('vim_mini', depth=12)          -> vim_d12_mini          (172 K params)
    timm.create_model('plainmamba_mini', depth=12)   -> plainmamba_d12_mini   (176 K params)

Why 12 blocks and not 24 (measured on this project's 2-core VM, one thread, batch 64, width 32, fwd+bwd+AdamW,
median of a few batches, `python benchmarks/train_testbed.py --measure vim_mini:12 vim_mini:24 ...`):

    model            depth   s/batch   min per epoch of 8,000 images (125 batches)
    vim_mini            6      2.0        4.2
    vim_mini           12      4.0        8.4
    vim_mini           24      8.4       17.4
    plainmamba_mini    12      6.5       13.6
    plainmamba_mini    24     15.6       32.4

Thirty epochs (what a from-scratch cosine schedule needs on 8,000 images to flatten) then cost ~4.5 h (Vim-12),
~9 h (Vim-24), ~7 h (PlainMamba-12) and ~16 h (PlainMamba-24) of one core, plus ~10 % for the per-epoch
evaluation. With one core free for background work and ~2.5 h per session, 24 blocks would take 4 and 7 sessions
for the two testbeds, 12 blocks take 2 and 3. 12 blocks still give the paper's shape of schedule (a first stage
after a quarter of the depth, three stages, blocks left after the last one), so 12 it is. On a GPU
(`--device cuda`) the same code runs unchanged.

Recipe (fixed before training; the validation split is never used to pick anything): seed 0; 30 epochs (20 for
plainmamba_d12_mini, see below); batch 64;
AdamW lr 2e-3, weight decay 0.05 (not on norms, biases, A_log, D, position embeddings: timm's
create_optimizer_v2), 2 warm-up epochs from 1e-6, per-step cosine to 1e-6; label smoothing 0.1; drop path 0.1;
random-resized crop (area 0.6-1, aspect 3/4-4/3, bilinear, like timm's) + horizontal flip 0.5, done in torch
with a generator seeded by (seed, epoch, batch), so that a resumed run draws exactly the batches and
augmentations it would have drawn. Data: the package's Animal-MNIST tree (``prepare_animal_mnist()`` fetches it
with ``pip download --no-deps animal-mnist==0.4`` on first use). Of its 8,000-image train split, 400 images (40
per class, duplicate-aware, seed 0) are held out ("holdout") and never trained on: they are the only signal for
judging convergence or changing the plan. The 2,000-image val split is evaluated after every epoch and only
reported. The final weights are those of the last epoch (not the best epoch on any split).

PlainMamba's schedule was cut to 20 epochs after 2 of 30 had run (the first run is in the git history of
benchmarks/testbed_ckpt/plainmamba_d12_mini/train.log), on cost alone: its epochs take twice Vim's (~15 min on a
free core, ~25 with the machine shared), 30 would have needed three more sessions, and on this data PlainMamba
learns faster than Vim (the 6-epoch minis: 87.75 vs 77.95). Nothing but its first two epochs' holdout top-1 (43.50,
66.25) had been seen; the convergence criterion (a flat holdout curve at the end) is the same.

Surviving across sessions: the checkpoint folder ``benchmarks/testbed_ckpt/<name>/`` is tracked by git. It holds

    last.pt      model, optimizer, schedule, epoch / batch position, running epoch loss, RNG states, curve
                 (only tensors, numbers, strings, lists, dicts: loads with torch.load(weights_only=True))
    curve.json   the per-epoch curve (train loss, holdout and val top-1, lr, minutes)
    train.log    the run's log (appended to by every restart)

``last.pt`` is rewritten (write to a temporary file, then rename) after every epoch, every ``--ckpt-minutes``
(10) minutes mid-epoch, and when the process gets SIGTERM / SIGINT (it finishes the current batch, saves, exits).
A restart resumes from it at the same batch with bitwise the same state (on the same device and thread count;
checked by tests/test_train_testbed.py, and by hand with kill -9: the losses after the restart are those of an
uninterrupted run). The config is stored in the checkpoint and a restart keeps it.

    bash benchmarks/train_testbed.sh vim_d12_mini          # start or resume in the background, one thread
    PKG_REV=HEAD bash benchmarks/train_testbed.sh vim_d12_mini   # same, importing the package as committed
                                                           # (use it while others have the tree mid-edit)
    tail -f benchmarks/testbed_ckpt/vim_d12_mini/train.log
    kill <pid>                                             # checkpoint now and stop (the wrapper prints the pid)
    git add benchmarks/testbed_ckpt/vim_d12_mini && git commit -m 'testbed checkpoint'   # before a session ends

When the last epoch is done it writes ``timm_ssm_prune/weights/<name>.animal_mnist.safetensors`` and
``benchmarks/results/<name>_curve.json``; running it again after that only rewrites those two files.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import math
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
FORMAT = 1

# The recipe. A preset names a testbed; everything in it is stored in the checkpoint and wins on resume.
RECIPE = dict(
    seed=0, epochs=30, batch_size=64, lr=2e-3, weight_decay=0.05, warmup_epochs=2, warmup_lr=1e-6, min_lr=1e-6,
    smoothing=0.1, drop_path=0.1, scale=[0.6, 1.0], ratio=[3 / 4, 4 / 3], hflip=0.5,
    holdout_per_class=40, holdout_seed=0,
)
PRESETS: Dict[str, dict] = {
    'vim_d12_mini': dict(base='vim_mini', model_kwargs=dict(depth=12)),
    # 20 epochs, not the recipe's 30: a PlainMamba epoch costs twice a Vim one (see the header)
    'plainmamba_d12_mini': dict(base='plainmamba_mini', model_kwargs=dict(depth=12), epochs=20),
    'vim_d24_mini': dict(base='vim_mini', model_kwargs=dict(depth=24)),
    'plainmamba_d24_mini': dict(base='plainmamba_mini', model_kwargs=dict(depth=24)),
}


# ------------------------------------------------------------------------------------------------------ data

class Splits:
    """uint8 images [N, 28, 28] and int64 labels of the three parts: fit (trained on), holdout, val."""

    def __init__(self, fit_x, fit_y, holdout_x, holdout_y, val_x, val_y):
        self.fit_x, self.fit_y = fit_x, fit_y
        self.holdout_x, self.holdout_y = holdout_x, holdout_y
        self.val_x, self.val_y = val_x, val_y


def _read_split(root: Path, split: str):
    from PIL import Image
    xs, ys = [], []
    for label, class_dir in enumerate(sorted(p for p in (root / split).iterdir() if p.is_dir())):
        for png in sorted(class_dir.glob('*.png')):
            with Image.open(png) as im:
                xs.append(np.asarray(im.convert('L'), dtype=np.uint8))
            ys.append(label)
    return np.stack(xs), np.asarray(ys, dtype=np.int64)


def load_animal_mnist(holdout_per_class: int, holdout_seed: int, root: Optional[str] = None) -> Splits:
    """The package's Animal-MNIST tree (fetched on first use), train split minus a stratified holdout."""
    from timm_ssm_prune.data import duplicate_groups, prepare_animal_mnist, stratified_split
    root = Path(prepare_animal_mnist(root, progress=False))
    tx, ty = _read_split(root, 'train')
    vx, vy = _read_split(root, 'val')
    fit_idx, hold_idx = stratified_split(ty, int(ty.max()) + 1, n_val_per_class=holdout_per_class,
                                         seed=holdout_seed, groups=duplicate_groups(tx))
    t = torch.from_numpy
    return Splits(t(tx[fit_idx]), t(ty[fit_idx]), t(tx[hold_idx]), t(ty[hold_idx]), t(vx), t(vy))


def _gen(*keys: int) -> torch.Generator:
    s = 0
    for k in keys:
        s = (s * 1_000_003 + int(k) + 1) % (2 ** 62)
    return torch.Generator().manual_seed(s)


def augment(x: torch.Tensor, gen: torch.Generator, scale, ratio, hflip: float) -> torch.Tensor:
    """Random-resized crop (bilinear, back to full size) + horizontal flip of uint8 [N, H, W] -> float [N, 1, H, W]
    in [0, 1]. All randomness comes from ``gen`` (drawn on the CPU)."""
    n = x.shape[0]
    area = torch.empty(n).uniform_(scale[0], scale[1], generator=gen)
    log_r = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen)
    r = log_r.exp()
    w = (area * r).sqrt().clamp(max=1.0)  # crop size as a fraction of the image side
    h = (area / r).sqrt().clamp(max=1.0)
    cx = (torch.rand(n, generator=gen) * 2 - 1) * (1 - w)  # crop centre in normalised coordinates
    cy = (torch.rand(n, generator=gen) * 2 - 1) * (1 - h)
    flip = torch.where(torch.rand(n, generator=gen) < hflip, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w * flip, cx, h, cy
    xf = x.unsqueeze(1).float() / 255
    theta = theta.to(xf.device)
    grid = F.affine_grid(theta, list(xf.shape), align_corners=False)
    return F.grid_sample(xf, grid, mode='bilinear', padding_mode='border', align_corners=False)


# ------------------------------------------------------------------------------------------------------ model

def build_model(cfg: dict) -> torch.nn.Module:
    import timm
    import timm_ssm_prune  # noqa: F401  (registers the models)
    torch.manual_seed(cfg['seed'])
    return timm.create_model(cfg['base'], drop_path_rate=cfg['drop_path'], **cfg['model_kwargs'])


def lr_at(step: int, cfg: dict, steps_per_epoch: int) -> float:
    """Linear warm-up from warmup_lr, then cosine to min_lr, per optimiser step (timm's cosine, per update)."""
    warm = cfg['warmup_epochs'] * steps_per_epoch
    total = cfg['epochs'] * steps_per_epoch
    if step < warm:
        return cfg['warmup_lr'] + (cfg['lr'] - cfg['warmup_lr']) * step / warm
    t = (step - warm) / max(1, total - warm)
    return cfg['min_lr'] + 0.5 * (cfg['lr'] - cfg['min_lr']) * (1 + math.cos(math.pi * min(t, 1.0)))


# ------------------------------------------------------------------------------------------------------ RNG

def get_rng_states() -> dict:
    """Global RNG states as tensors / ints only (torch.load(weights_only=True) can read them)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    states = {
        'torch': torch.get_rng_state(),
        'numpy': {'keys': torch.from_numpy(np_state[1].astype(np.int64)), 'pos': int(np_state[2]),
                  'has_gauss': int(np_state[3]), 'cached_gaussian': float(np_state[4])},
        'python': {'version': int(py_state[0]), 'state': torch.tensor(py_state[1], dtype=torch.int64),
                   'gauss_next': 'none' if py_state[2] is None else float(py_state[2])},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states['cuda'] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states['torch'])
    n = states['numpy']
    np.random.set_state(('MT19937', n['keys'].numpy().astype(np.uint32), n['pos'], n['has_gauss'],
                         n['cached_gaussian']))
    p = states['python']
    random.setstate((p['version'], tuple(int(v) for v in p['state'].tolist()),
                     None if p['gauss_next'] == 'none' else p['gauss_next']))
    if 'cuda' in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states['cuda'])


# ------------------------------------------------------------------------------------------------------ files

def atomic_write_bytes(path: Path, write: Callable[[str], None]) -> None:
    """``write(tmp_path)`` then fsync and rename over ``path``: readers see the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.tmp-{os.getpid()}')
    try:
        write(str(tmp))
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, lambda p: Path(p).write_text(json.dumps(obj, indent=1) + '\n'))


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location='cpu', weights_only=True)


def _cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


# ------------------------------------------------------------------------------------------------------ training

class _StopFlag:
    def __init__(self):
        self.requested = False

    def __call__(self, signum, frame):
        self.requested = True


@torch.no_grad()
def evaluate(model, x: torch.Tensor, y: torch.Tensor, mean: float, std: float, dev, batch: int = 500) -> dict:
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    for i in range(0, len(x), batch):
        xb = ((x[i:i + batch].unsqueeze(1).float() / 255 - mean) / std).to(dev)
        yb = y[i:i + batch].to(dev)
        out = model(xb).float()
        loss_sum += F.cross_entropy(out, yb, reduction='sum').item()
        correct += (out.argmax(-1) == yb).sum().item()
    model.train(was_training)
    return {'top1': 100.0 * correct / len(x), 'loss': loss_sum / len(x)}


def train(cfg: dict, data: Splits, ckpt_dir: Path, device: str = 'cpu', *, max_steps: Optional[int] = None,
          ckpt_every_steps: Optional[int] = None, ckpt_minutes: float = 10.0, log_every: int = 20,
          log: Callable[[str], None] = print, weights_out: Optional[Path] = None,
          curve_out: Optional[Path] = None, handle_signals: bool = False) -> dict:
    """Train ``cfg`` (a preset merged with RECIPE) from scratch or from ``ckpt_dir/last.pt``.

    Returns the final checkpoint dict (also when stopped early by ``max_steps``, a test hook that simulates an
    interruption: it saves a checkpoint after that many optimiser steps in total and returns)."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_path = ckpt_dir / 'last.pt'
    dev = torch.device(device)
    model = build_model(cfg).to(dev)
    from timm.optim import create_optimizer_v2
    optimizer = create_optimizer_v2(model, opt='adamw', lr=cfg['lr'], weight_decay=cfg['weight_decay'])
    mean = float(model.pretrained_cfg['mean'][0])
    std = float(model.pretrained_cfg['std'][0])
    bs = cfg['batch_size']
    steps_per_epoch = len(data.fit_x) // bs  # drop_last, as timm's training loader
    if steps_per_epoch == 0:
        raise ValueError(f'{len(data.fit_x)} training images are fewer than one batch of {bs}')

    st = dict(epoch=0, batch=0, global_step=0, loss_sum=0.0, loss_count=0, epoch_seconds=0.0, total_seconds=0.0,
              curve=[], finished=False)
    if ckpt_path.is_file():
        ck = load_checkpoint(ckpt_path)
        if ck.get('format') != FORMAT:
            raise RuntimeError(f'{ckpt_path}: checkpoint format {ck.get("format")}, expected {FORMAT}')
        diff = {k: (ck['config'].get(k), v) for k, v in cfg.items() if ck['config'].get(k) != v}
        if diff:
            raise RuntimeError(f'{ckpt_path} was written with another config (checkpoint, now): {diff}')
        model.load_state_dict(ck['model'])
        optimizer.load_state_dict(ck['optimizer'])
        st.update({k: ck[k] for k in st})
        set_rng_states(ck['rng'])
        log(f'resumed from {ckpt_path}: epoch {st["epoch"]} batch {st["batch"]}/{steps_per_epoch} '
            f'(global step {st["global_step"]}), {st["total_seconds"] / 3600:.2f} h trained so far')
    else:
        n_params = sum(p.numel() for p in model.parameters())
        log(f'fresh start: {cfg["name"]} = {cfg["base"]}({cfg["model_kwargs"]}), {n_params} params, '
            f'{len(data.fit_x)} fit / {len(data.holdout_x)} holdout / {len(data.val_x)} val images, '
            f'{steps_per_epoch} steps per epoch, device {dev}, threads {torch.get_num_threads()}')
        torch.manual_seed(cfg['seed'] + 1)  # drop-path stream, independent of the initialisation's
    sched = dict(kind='linear warm-up + cosine, per step', lr=cfg['lr'], warmup_lr=cfg['warmup_lr'],
                 min_lr=cfg['min_lr'], warmup_steps=cfg['warmup_epochs'] * steps_per_epoch,
                 total_steps=cfg['epochs'] * steps_per_epoch, steps_per_epoch=steps_per_epoch)

    def save(reason: str):
        ck = dict(format=FORMAT, config=cfg, model=_cpu(model.state_dict()), optimizer=_cpu(optimizer.state_dict()),
                  schedule=dict(sched, step=st['global_step']), rng=get_rng_states(),
                  torch_version=str(torch.__version__), saved_at=time.strftime('%Y-%m-%d %H:%M:%S'), **st)
        atomic_write_bytes(ckpt_path, lambda p: torch.save(ck, p))
        atomic_write_json(ckpt_dir / 'curve.json', dict(name=cfg['name'], config=cfg, curve=st['curve']))
        log(f'checkpoint ({reason}): epoch {st["epoch"]} batch {st["batch"]} global step {st["global_step"]}')
        return ck

    stop = _StopFlag()
    old_handlers = {}
    if handle_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            old_handlers[sig] = signal.signal(sig, stop)
    try:
        last_save = time.monotonic()
        model.train()
        while st['epoch'] < cfg['epochs'] and not st['finished']:
            epoch = st['epoch']
            perm = torch.randperm(len(data.fit_x), generator=_gen(cfg['seed'], epoch))
            t_mark = time.monotonic()
            while st['batch'] < steps_per_epoch:
                b = st['batch']
                idx = perm[b * bs:(b + 1) * bs]
                x = augment(data.fit_x[idx], _gen(cfg['seed'], epoch, b), cfg['scale'], cfg['ratio'], cfg['hflip'])
                x = ((x - mean) / std).to(dev)
                y = data.fit_y[idx].to(dev)
                lr = lr_at(st['global_step'], cfg, steps_per_epoch)
                for g in optimizer.param_groups:
                    g['lr'] = lr
                loss = F.cross_entropy(model(x), y, label_smoothing=cfg['smoothing'])
                if not math.isfinite(loss.item()):
                    raise RuntimeError(f'loss is {loss.item()} at epoch {epoch} batch {b}')
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                st['batch'] += 1
                st['global_step'] += 1
                st['loss_sum'] += loss.item() * len(idx)
                st['loss_count'] += len(idx)
                now = time.monotonic()
                st['epoch_seconds'] += now - t_mark
                st['total_seconds'] += now - t_mark
                t_mark = now
                if log_every and st['global_step'] % log_every == 0:
                    log(f'step {st["global_step"]} (epoch {epoch} batch {st["batch"]}/{steps_per_epoch}) '
                        f'loss {loss.item():.6f} lr {lr:.3e}')
                hit_max = max_steps is not None and st['global_step'] >= max_steps
                due = (ckpt_every_steps and st['global_step'] % ckpt_every_steps == 0) or \
                    (ckpt_minutes and now - last_save >= ckpt_minutes * 60)
                if stop.requested or hit_max:
                    return save('signal' if stop.requested else 'max_steps')
                if due:
                    save('periodic')
                    last_save = time.monotonic()
                    t_mark = last_save
            t_eval = time.monotonic()
            hold = evaluate(model, data.holdout_x, data.holdout_y, mean, std, dev)
            val = evaluate(model, data.val_x, data.val_y, mean, std, dev)
            st['total_seconds'] += time.monotonic() - t_eval
            row = dict(epoch=epoch + 1, train_loss=st['loss_sum'] / max(1, st['loss_count']),
                       holdout_top1=hold['top1'], holdout_loss=hold['loss'], val_top1=val['top1'],
                       val_loss=val['loss'], lr=lr_at(st['global_step'] - 1, cfg, steps_per_epoch),
                       train_minutes=st['epoch_seconds'] / 60, total_hours=st['total_seconds'] / 3600)
            st['curve'].append(row)
            log(f'epoch {epoch + 1}/{cfg["epochs"]} train_loss {row["train_loss"]:.4f} '
                f'holdout_top1 {row["holdout_top1"]:.2f} val_top1 {row["val_top1"]:.2f} lr {row["lr"]:.3e} '
                f'train_min {row["train_minutes"]:.1f} total_h {row["total_hours"]:.2f}')
            st.update(epoch=epoch + 1, batch=0, loss_sum=0.0, loss_count=0, epoch_seconds=0.0)
            if st['epoch'] >= cfg['epochs']:
                st['finished'] = True
            ck = save('end of epoch' if not st['finished'] else 'finished')
            last_save = time.monotonic()
            if stop.requested or (max_steps is not None and st['global_step'] >= max_steps):
                return ck
    finally:
        for sig, h in old_handlers.items():
            signal.signal(sig, h)
    ck = load_checkpoint(ckpt_path)
    if ck.get('finished'):
        write_outputs(ck, model, weights_out, curve_out, log)
    return ck


def write_outputs(ck: dict, model, weights_out: Optional[Path], curve_out: Optional[Path], log=print) -> None:
    """Final weights (safetensors, last epoch) and the curve."""
    cfg = ck['config']
    last = ck['curve'][-1] if ck['curve'] else {}
    if weights_out is not None:
        from safetensors.torch import save_file
        model.load_state_dict(ck['model'])
        sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        meta = {'name': cfg['name'], 'base': cfg['base'], 'model_kwargs': json.dumps(cfg['model_kwargs']),
                'recipe': 'benchmarks/train_testbed.py', 'epochs': str(cfg['epochs']), 'seed': str(cfg['seed']),
                'val_top1': f'{last.get("val_top1", float("nan")):.2f}',
                'holdout_top1': f'{last.get("holdout_top1", float("nan")):.2f}'}
        atomic_write_bytes(Path(weights_out), lambda p: save_file(sd, p, metadata=meta))
        log(f'wrote {weights_out}')
    if curve_out is not None:
        atomic_write_json(Path(curve_out), dict(name=cfg['name'], config=cfg, curve=ck['curve'],
                                                total_hours=ck['total_seconds'] / 3600))
        log(f'wrote {curve_out}')


# ------------------------------------------------------------------------------------------------------ CLI

def measure(specs: List[str], batches: int = 5, batch_size: int = 64) -> None:
    """Seconds per training batch (fwd + bwd + AdamW) of BASE:DEPTH models, median of the last batches."""
    import timm
    import timm_ssm_prune  # noqa: F401
    for spec in specs:
        base, depth = spec.split(':')
        torch.manual_seed(0)
        model = timm.create_model(base, depth=int(depth), drop_path_rate=0.1)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x, y = torch.randn(batch_size, 1, 28, 28), torch.randint(0, 10, (batch_size,))
        times = []
        for _ in range(batches):
            t = time.perf_counter()
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t)
        s = float(np.median(times[1:]))
        print(f'{base} depth {depth}: {s:.2f} s/batch -> {s * 8000 / batch_size / 60:.1f} min per 8,000-image epoch '
              f'({torch.get_num_threads()} thread(s))', flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('name', nargs='?', choices=sorted(PRESETS), help='testbed to train (or resume)')
    p.add_argument('--device', default='cpu')
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--ckpt-root', default=str(REPO / 'benchmarks' / 'testbed_ckpt'))
    p.add_argument('--ckpt-minutes', type=float, default=10.0, help='mid-epoch checkpoint interval')
    p.add_argument('--log-every', type=int, default=20)
    p.add_argument('--epochs', type=int, default=None,
                   help=f'override (fresh start only; default {RECIPE["epochs"]}, or the preset\'s)')
    p.add_argument('--depth', type=int, default=None, help='override the preset depth (fresh start only; smoke tests)')
    p.add_argument('--max-steps', type=int, default=None, help='stop (with a checkpoint) after this global step')
    p.add_argument('--data-root', default=None, help='Animal-MNIST tree (default: the package cache)')
    p.add_argument('--weights-out', default=None)
    p.add_argument('--curve-out', default=None)
    p.add_argument('--measure', nargs='+', metavar='BASE:DEPTH', help='only time a few training batches')
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.measure:
        measure(args.measure)
        return 0
    if not args.name:
        p.error('name the testbed to train')
    cfg = dict(name=args.name, **{**RECIPE, **PRESETS[args.name]})  # a preset's own values win
    if args.epochs is not None:
        cfg['epochs'] = args.epochs
    if args.depth is not None:
        cfg['model_kwargs'] = dict(cfg['model_kwargs'], depth=args.depth)
    ckpt_dir = Path(args.ckpt_root) / args.name
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    if (ckpt_dir / 'last.pt').is_file():  # a resumed run keeps the config it started with
        saved = load_checkpoint(ckpt_dir / 'last.pt')['config']
        changed = {k: (saved.get(k), v) for k, v in cfg.items()
                   if k in ('epochs', 'model_kwargs') and saved.get(k) != v}
        if (args.epochs is not None or args.depth is not None) and changed:
            p.error(f'{ckpt_dir} was started with another config (saved, asked): {changed}; '
                    f'move the folder away to start afresh')
        cfg = saved
    weights_out = Path(args.weights_out
                       or REPO / 'timm_ssm_prune' / 'weights' / f'{args.name}.animal_mnist.safetensors')
    curve_out = Path(args.curve_out or REPO / 'benchmarks' / 'results' / f'{args.name}_curve.json')

    def log(msg: str):
        print(f'[{time.strftime("%Y-%m-%d %H:%M:%S")}] {msg}', flush=True)

    # one trainer per checkpoint folder: a second start exits at once instead of racing the first
    lock_fd = os.open(ckpt_dir, os.O_RDONLY)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log(f'{ckpt_dir} is in use by another training process; not starting')
        return 1
    log(f'pid {os.getpid()}: {" ".join(sys.argv)}')
    data = load_animal_mnist(cfg['holdout_per_class'], cfg['holdout_seed'], args.data_root)
    ck = train(cfg, data, ckpt_dir, args.device, max_steps=args.max_steps, ckpt_minutes=args.ckpt_minutes,
               log_every=args.log_every, log=log, weights_out=weights_out, curve_out=curve_out,
               handle_signals=True)
    log('done' if ck.get('finished') else 'stopped; rerun the same command to resume')
    return 0


if __name__ == '__main__':
    sys.exit(main())
