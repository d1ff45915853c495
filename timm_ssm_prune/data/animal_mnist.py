"""Animal-MNIST as a timm/torchvision ImageFolder tree.

Source: the PyPI package ``animal-mnist==0.4`` (MIT licence), whose wheel ships 10,000 real 28x28 grey
animal-silhouette images (1,000 per class) as two gzip-compressed pickles of numpy arrays:

* ``animal_mnist/data/Animal_MNIST/animal_data_version_3.gz``  -> ``uint8`` array ``[10000, 28, 28]``
* ``animal_mnist/data/Animal_MNIST/animal_label_version_3.gz`` -> ``int64`` array ``[10000]``, values 0..9

The package is never installed or imported (it would pull in tensorflow, scikit-learn and pandas): its wheel is
only *downloaded* with ``pip download --no-deps --only-binary=:all:``, checked against a pinned sha256, opened as
a zip file, and the two pickles are read with an unpickler that can only rebuild plain numpy arrays.

The resulting tree (default root ``$TIMM_SSM_PRUNE_DATA`` or ``~/.cache/timm_ssm_prune/animal_mnist``)::

    <root>/meta.json
    <root>/train/<label>_<name>/<index>.png     8,000 images (800 per class)
    <root>/val/<label>_<name>/<index>.png       2,000 images (200 per class)

Class folders are prefixed with their label so that sorting them (alphabetically or "naturally") gives back the
original label order, i.e. ``timm.data.create_dataset('', root=root, split='train')`` yields the original labels.
``<index>`` is the row of the image in the source array, so every PNG can be traced back to the package data.

The split is stratified and seeded (seed 0).  The source holds 284 pairs of byte-identical images (always with the
same label); each pair is kept inside one split, so no validation image also appears in the training split.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image
from tqdm import tqdm

__all__ = [
    'PACKAGE_NAME', 'PACKAGE_VERSION', 'WHEEL_FILENAME', 'WHEEL_SHA256', 'SOURCE_URL', 'LICENSE',
    'DATA_MEMBER', 'LABEL_MEMBER', 'CLASS_NAMES', 'IMAGE_SIZE', 'SPLIT_SEED', 'DEFAULT_VAL_FRACTION',
    'ENV_VAR', 'ChecksumError', 'RestrictedNumpyUnpickler', 'default_root', 'sha256_file', 'download_wheel',
    'load_arrays', 'duplicate_groups', 'stratified_split', 'prepare_animal_mnist',
]

PathLike = Union[str, os.PathLike]

# --------------------------------------------------------------------------------------------------------------
# Pinned facts about the source package (checked by hand on the published wheel).
# --------------------------------------------------------------------------------------------------------------
PACKAGE_NAME = 'animal-mnist'
PACKAGE_VERSION = '0.4'
WHEEL_FILENAME = 'animal_mnist-0.4-py3-none-any.whl'
WHEEL_SHA256 = 'aeebf3d9de4552d6fd2d5701424e1a5b9020f8e5115d68df9db252f2f53ce2ce'
SOURCE_URL = 'https://pypi.org/project/animal-mnist/0.4/'
LICENSE = 'MIT'

# Paths of the two gzip pickles inside the wheel.
DATA_MEMBER = 'animal_mnist/data/Animal_MNIST/animal_data_version_3.gz'
LABEL_MEMBER = 'animal_mnist/data/Animal_MNIST/animal_label_version_3.gz'

# The package README lists the classes as "Bear, Bird, Cat, Cow, Dog, Elephant, Giraffe, Horse, Sheep, Zebra";
# looking at samples of each label confirms that label i is the i-th name of that (alphabetical) list.
CLASS_NAMES: Tuple[str, ...] = (
    'bear', 'bird', 'cat', 'cow', 'dog', 'elephant', 'giraffe', 'horse', 'sheep', 'zebra',
)
IMAGE_SIZE = (28, 28)

SPLIT_SEED = 0
DEFAULT_VAL_FRACTION = 0.2          # 2,000 of the 10,000 images -> 200 per class
ENV_VAR = 'TIMM_SSM_PRUNE_DATA'
META_FILENAME = 'meta.json'
SPLITS = ('train', 'val')
FORMAT_VERSION = 1                  # bump when the on-disk layout changes, so that old caches get rebuilt


class ChecksumError(RuntimeError):
    """The wheel on disk is not the one this module was written for."""


# --------------------------------------------------------------------------------------------------------------
# Safe reading of the pickles.
# --------------------------------------------------------------------------------------------------------------
def _multiarray_reconstruct():
    """numpy's array-rebuilding function (moved from ``numpy.core`` to ``numpy._core`` in numpy 2)."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2 without the ``numpy._core`` alias
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class RestrictedNumpyUnpickler(pickle.Unpickler):
    """Unpickler that can only rebuild plain numpy arrays.

    A pickled ``ndarray`` (protocol 2+) references exactly three globals: the array-rebuilding function
    ``_reconstruct``, the class ``numpy.ndarray`` and ``numpy.dtype``.  (The opcodes of both files in the wheel
    were inspected with ``pickletools.genops``; they contain nothing else.)  Every other global, including any
    callable a malicious ``__reduce__`` could name (``os.system``, ``builtins.eval``, ...), is refused *before*
    it is resolved, so it can never be called.  Persistent ids are refused by ``pickle.Unpickler`` itself since
    no ``persistent_load`` is defined.  Object arrays are impossible too: their elements would need further
    globals, and :func:`load_arrays` additionally checks the resulting dtypes.
    """

    # (module, name) pairs that may appear in the stream; the numpy 1.x and 2.x spellings of ``_reconstruct``.
    ALLOWED = frozenset({
        ('numpy.core.multiarray', '_reconstruct'),
        ('numpy._core.multiarray', '_reconstruct'),
        ('numpy', 'ndarray'),
        ('numpy', 'dtype'),
    })

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(
                f'refusing to load global {module}.{name!s}: only plain numpy arrays may be unpickled '
                f'(allowed: {", ".join(sorted(f"{m}.{n}" for m, n in self.ALLOWED))})')
        # Resolve from a fixed table instead of importing ``module`` by name (also avoids numpy 2's
        # deprecation warning for the ``numpy.core`` spelling).
        if name == '_reconstruct':
            return _multiarray_reconstruct()
        return {'ndarray': np.ndarray, 'dtype': np.dtype}[name]


def _load_numpy_pickle(raw_gzip: bytes, what: str) -> np.ndarray:
    """Decompress and safely unpickle one gzip pickle that must hold a single ndarray."""
    with gzip.GzipFile(fileobj=io.BytesIO(raw_gzip), mode='rb') as stream:
        obj = RestrictedNumpyUnpickler(stream).load()
    if type(obj) is not np.ndarray:
        raise ValueError(f'{what}: expected a numpy ndarray, got {type(obj).__name__}')
    return obj


# --------------------------------------------------------------------------------------------------------------
# Wheel: checksum, download, arrays.
# --------------------------------------------------------------------------------------------------------------
def sha256_file(path: PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(chunk_size), b''):
            digest.update(chunk)
    return digest.hexdigest()


def _verify_sha256(path: Path, expected_sha256: str) -> str:
    got = sha256_file(path)
    if got != expected_sha256.lower():
        raise ChecksumError(
            f'sha256 mismatch for {path}: expected {expected_sha256.lower()}, got {got}. '
            f'The file is not the published {WHEEL_FILENAME} (corrupted download or a different file); '
            f'delete it and try again.')
    return got


def download_wheel(dest_dir: PathLike, expected_sha256: str = WHEEL_SHA256) -> Path:
    """Download (never install) the ``animal-mnist==0.4`` wheel into ``dest_dir`` with pip and verify it.

    ``--no-deps`` skips its heavy dependencies and ``--only-binary=:all:`` guarantees pip never falls back to a
    source distribution (whose build step would run the package's code).
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, '-m', 'pip', 'download', '--no-deps', '--only-binary=:all:', '--no-input',
        '--disable-pip-version-check', f'{PACKAGE_NAME}=={PACKAGE_VERSION}', '-d', str(dest_dir),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = '\n'.join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise RuntimeError(
            f'could not download {PACKAGE_NAME}=={PACKAGE_VERSION} (exit code {proc.returncode}):\n  '
            f'{" ".join(cmd)}\n{tail}\nIf this machine is offline, download {WHEEL_FILENAME} elsewhere '
            f'({SOURCE_URL}) and pass wheel_path=.')
    wheel = dest_dir / WHEEL_FILENAME
    if not wheel.is_file():
        found = sorted(p.name for p in dest_dir.iterdir())
        raise RuntimeError(f'pip download succeeded but {wheel} is missing (found: {found})')
    _verify_sha256(wheel, expected_sha256)
    return wheel


def load_arrays(
        wheel_path: PathLike,
        expected_sha256: Optional[str] = WHEEL_SHA256,
) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """Read the images and labels out of the wheel, after checking its sha256.

    Returns ``(images, labels, class_names)``: ``uint8 [N, 28, 28]``, ``int64 [N]`` with values in
    ``[0, len(class_names))``, and the class names in label order.  ``expected_sha256=None`` skips the check
    (only meant for callers that verified the file themselves).
    """
    wheel_path = Path(wheel_path)
    if expected_sha256 is not None:
        _verify_sha256(wheel_path, expected_sha256)
    with zipfile.ZipFile(wheel_path) as zf:
        names = set(zf.namelist())
        missing = [m for m in (DATA_MEMBER, LABEL_MEMBER) if m not in names]
        if missing:
            raise ValueError(f'{wheel_path} does not contain {missing}')
        images = _load_numpy_pickle(zf.read(DATA_MEMBER), DATA_MEMBER)
        labels = _load_numpy_pickle(zf.read(LABEL_MEMBER), LABEL_MEMBER)

    # Validate instead of trusting: the rest of the module relies on these shapes and types.
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != IMAGE_SIZE:
        raise ValueError(f'{DATA_MEMBER}: expected uint8 [N, {IMAGE_SIZE[0]}, {IMAGE_SIZE[1]}], '
                         f'got {images.dtype} {list(images.shape)}')
    if labels.ndim != 1 or labels.dtype.kind not in 'iu' or len(labels) != len(images):
        raise ValueError(f'{LABEL_MEMBER}: expected {len(images)} integer labels, '
                         f'got {labels.dtype} {list(labels.shape)}')
    labels = labels.astype(np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CLASS_NAMES)):
        raise ValueError(f'{LABEL_MEMBER}: labels must lie in [0, {len(CLASS_NAMES)}), '
                         f'got [{labels.min()}, {labels.max()}]')
    return np.ascontiguousarray(images), labels, list(CLASS_NAMES)


# --------------------------------------------------------------------------------------------------------------
# Split.
# --------------------------------------------------------------------------------------------------------------
def _val_counts(class_counts: np.ndarray, val_fraction: float, n_val_per_class: Optional[int]) -> np.ndarray:
    """How many images of each class go to the validation split.

    With ``n_val_per_class`` every class gives exactly that many.  Otherwise the total is
    ``round(val_fraction * N)`` and it is shared out proportionally to the class sizes (largest-remainder
    rounding, ties to the lower label), so that the totals are exact even when classes are unbalanced.
    """
    if n_val_per_class is not None:
        if n_val_per_class < 1 or n_val_per_class >= class_counts.min():
            raise ValueError(f'n_val_per_class={n_val_per_class} must be >= 1 and smaller than the smallest '
                             f'class ({int(class_counts.min())} images)')
        return np.full(len(class_counts), n_val_per_class, dtype=np.int64)
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f'val_fraction={val_fraction} must lie strictly between 0 and 1')
    total = int(class_counts.sum())
    n_val = int(round(val_fraction * total))
    quota = class_counts * n_val / total
    counts = np.floor(quota).astype(np.int64)
    remainder = n_val - int(counts.sum())
    order = sorted(range(len(counts)), key=lambda c: (-(quota[c] - counts[c]), c))
    for c in order[:remainder]:
        counts[c] += 1
    return counts


def duplicate_groups(images: np.ndarray) -> np.ndarray:
    """Group id per image; images with byte-identical pixels share an id (ids are ranks of the unique images)."""
    flat = np.ascontiguousarray(images).reshape(len(images), -1)
    _, inverse = np.unique(flat, axis=0, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64)


def stratified_split(
        labels: np.ndarray,
        num_classes: int,
        val_fraction: float = DEFAULT_VAL_FRACTION,
        n_val_per_class: Optional[int] = None,
        seed: int = SPLIT_SEED,
        groups: Optional[np.ndarray] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split; returns sorted ``(train_indices, val_indices)`` into ``labels``.

    Classes are visited in label order with one ``numpy.random.default_rng(seed)`` generator.  Without
    ``groups``, each class's indices are shuffled and the first ``k_c`` go to validation.  With ``groups``
    (e.g. :func:`duplicate_groups`), the *groups* within a class are shuffled and taken whole while they fit in
    the class's quota, so that identical images land in the same split; the quota ``k_c`` is still met exactly
    (a group is only cut in the rare case where nothing else fits).
    """
    labels = np.asarray(labels)
    class_counts = np.bincount(labels, minlength=num_classes)
    if (class_counts == 0).any():
        raise ValueError(f'classes without any image: {np.flatnonzero(class_counts == 0).tolist()}')
    if len(class_counts) > num_classes:
        raise ValueError(f'labels go up to {len(class_counts) - 1} but num_classes={num_classes}')
    n_val = _val_counts(class_counts, val_fraction, n_val_per_class)
    rng = np.random.default_rng(seed)
    val_parts = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        if groups is None:
            val_parts.append(rng.permutation(members)[:n_val[c]])
            continue
        member_groups = np.asarray(groups)[members]
        # Units = the class's images bundled by group, visited in a seeded random order.
        units = [members[member_groups == g] for g in rng.permutation(np.unique(member_groups))]
        chosen, left_over, need = [], [], int(n_val[c])
        for unit in units:
            if len(unit) <= need:
                chosen.append(unit)
                need -= len(unit)
            else:
                left_over.append(unit)
        if need:  # only groups larger than the remaining quota are left: cut the first one
            chosen.append(np.concatenate(left_over)[:need])
        val_parts.append(np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64))
    val_idx = np.sort(np.concatenate(val_parts))
    is_val = np.zeros(len(labels), dtype=bool)
    is_val[val_idx] = True
    return np.flatnonzero(~is_val), val_idx


# --------------------------------------------------------------------------------------------------------------
# Tree on disk.
# --------------------------------------------------------------------------------------------------------------
def default_root() -> Path:
    """``$TIMM_SSM_PRUNE_DATA`` if set, else ``~/.cache/timm_ssm_prune/animal_mnist``."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path('~/.cache/timm_ssm_prune/animal_mnist').expanduser()


def _class_dirs(class_names: Sequence[str]) -> List[str]:
    """``0_bear``, ``1_bird``, ... -- label prefix zero-padded so that plain and natural sorting agree."""
    width = len(str(len(class_names) - 1))
    return [f'{i:0{width}d}_{name}' for i, name in enumerate(class_names)]


def _count_pngs(folder: Path) -> int:
    try:
        with os.scandir(folder) as it:
            return sum(1 for e in it if e.name.endswith('.png') and e.is_file())
    except FileNotFoundError:
        return -1


def _cache_is_valid(root: Path, expected_sha256: str, split_config: Dict) -> bool:
    """True when ``root`` holds a finished tree built from the same wheel with the same split.

    Only reads: ``meta.json`` and directory listings (cheap: 20 folders).  ``meta.json`` is written last and the
    tree is moved into place in one rename, so an existing ``meta.json`` means the build had finished; the
    listing only guards against files deleted by hand afterwards.
    """
    try:
        meta = json.loads((root / META_FILENAME).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict) or meta.get('format_version') != FORMAT_VERSION:
        return False
    if meta.get('wheel_sha256') != expected_sha256.lower() or meta.get('split') != split_config:
        return False
    counts = meta.get('counts')
    if not isinstance(counts, dict):
        return False
    for split in SPLITS:
        per_class = counts.get(split)
        if not isinstance(per_class, dict) or not per_class:
            return False
        for class_dir, n in per_class.items():
            if _count_pngs(root / split / class_dir) != n:
                return False
    return True


def _write_pngs(
        out_dir: Path,
        images: np.ndarray,
        labels: np.ndarray,
        class_dirs: Sequence[str],
        splits: Dict[str, np.ndarray],
        progress: Optional[bool],
) -> None:
    """Write every image of every split as an 8-bit grey PNG ``<out_dir>/<split>/<class_dir>/<index>.png``."""
    width = len(str(len(images) - 1))
    for split in splits:
        for class_dir in class_dirs:
            (out_dir / split / class_dir).mkdir(parents=True)
    total = sum(len(idx) for idx in splits.values())
    # disable=None lets tqdm switch itself off when stderr is not a terminal.
    with tqdm(total=total, desc='animal-mnist: writing PNGs', unit='img',
              disable=None if progress is None else not progress) as bar:
        for split, indices in splits.items():
            for i in indices:
                path = out_dir / split / class_dirs[labels[i]] / f'{i:0{width}d}.png'
                Image.fromarray(images[i]).save(path, format='PNG')  # 2-D uint8 -> mode 'L', lossless
                bar.update(1)


def _is_replaceable(root: Path) -> bool:
    """Only ever delete a folder that holds nothing but what this module writes (or nothing at all)."""
    return set(os.listdir(root)) <= {*SPLITS, META_FILENAME}


def _install_tree(tmp_dir: Path, root: Path) -> None:
    """Move the finished ``tmp_dir`` to ``root``, replacing an outdated tree if there is one."""
    if not root.exists():
        os.replace(tmp_dir, root)
        return
    # Two renames: the old tree moves aside, the new one moves in.  In between ``root`` is briefly absent,
    # which readers see as "not built yet", never as a half-written tree.
    trash = Path(tempfile.mkdtemp(prefix=f'.{root.name}.old-', dir=root.parent))
    try:
        os.replace(root, trash / 'tree')
        try:
            os.replace(tmp_dir, root)
        except OSError:
            if not root.exists():
                os.replace(trash / 'tree', root)  # put the previous tree back
            raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def _build_lock(root: Path):
    """Serialise builds of the tree at ``root`` across processes (an exclusive ``flock`` on a sibling lock file;
    where ``fcntl`` does not exist, no lock). Two trainings started together then build it once: without it, the
    second build replaced the first one's tree while that process was already reading it."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    with open(root.parent / f'.{root.name}.lock', 'a') as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def prepare_animal_mnist(
        root: Optional[PathLike] = None,
        force: bool = False,
        *,
        wheel_path: Optional[PathLike] = None,
        expected_sha256: str = WHEEL_SHA256,
        val_fraction: float = DEFAULT_VAL_FRACTION,
        n_val_per_class: Optional[int] = None,
        seed: int = SPLIT_SEED,
        progress: Optional[bool] = None,
) -> Path:
    """Build (once) the Animal-MNIST ImageFolder tree and return its root.

    Args:
        root: target folder; default :func:`default_root`.  Must be absent, empty, or a tree made by this function.
        force: rebuild even when a valid tree is already there.
        wheel_path: an already downloaded ``animal_mnist-0.4-py3-none-any.whl``; skips pip.
        expected_sha256: sha256 the wheel must have (tests pass the digest of a fake wheel).
        val_fraction: share of the images for the ``val`` split, stratified by class (0.2 -> 8,000 / 2,000).
        n_val_per_class: if given, exactly this many ``val`` images per class instead of ``val_fraction``.
        seed: seed of the split (fixed to 0 by default).
        progress: show a tqdm bar; ``None`` shows it only on a terminal.

    A second call with the same arguments finds ``<root>/meta.json`` and returns at once (no download, no writes).
    The tree is built in a hidden temporary folder next to ``root`` and renamed into place when complete, so an
    interrupted run never leaves a tree that looks finished; concurrent calls build it once (a lock file next to
    ``root``), the others wait and use that tree.
    """
    root = Path(root).expanduser() if root is not None else default_root()
    root = root.absolute()
    expected_sha256 = expected_sha256.lower()
    split_config = {'seed': int(seed), 'val_fraction': float(val_fraction),
                    'n_val_per_class': None if n_val_per_class is None else int(n_val_per_class),
                    'duplicates_kept_together': True}

    if not force and _cache_is_valid(root, expected_sha256, split_config):
        return root
    if root.exists() and (not root.is_dir() or not _is_replaceable(root)):
        raise FileExistsError(
            f'{root} exists and holds files that are not part of an Animal-MNIST tree; refusing to overwrite it. '
            f'Choose another root (or ${ENV_VAR}).')
    root.parent.mkdir(parents=True, exist_ok=True)

    with _build_lock(root):  # one build at a time; who waited finds the finished tree
        if not force and _cache_is_valid(root, expected_sha256, split_config):
            return root
        tmp_dir = Path(tempfile.mkdtemp(prefix=f'.{root.name}.tmp-', dir=root.parent))
        try:
            if wheel_path is None:
                wheel = download_wheel(tmp_dir / '_wheel', expected_sha256)
            else:
                wheel = Path(wheel_path)
            images, labels, class_names = load_arrays(wheel, expected_sha256)
            shutil.rmtree(tmp_dir / '_wheel', ignore_errors=True)  # the download is not part of the tree

            class_dirs = _class_dirs(class_names)
            # Exact duplicates exist in the source (284 pairs in the real data); keep each pair in one split so that
            # validation images never also appear in training.
            groups = duplicate_groups(images)
            train_idx, val_idx = stratified_split(labels, len(class_names), val_fraction, n_val_per_class, seed,
                                                  groups=groups)
            splits = {'train': train_idx, 'val': val_idx}
            _write_pngs(tmp_dir, images, labels, class_dirs, splits, progress)

            meta = {
                'format_version': FORMAT_VERSION,
                'dataset': 'Animal-MNIST',
                'source_package': f'{PACKAGE_NAME}=={PACKAGE_VERSION}',
                'source_url': SOURCE_URL,
                'license': LICENSE,
                'wheel_filename': WHEEL_FILENAME,
                'wheel_sha256': expected_sha256,
                'wheel_members': [DATA_MEMBER, LABEL_MEMBER],
                'image_size': list(IMAGE_SIZE),
                'image_mode': 'L',
                'num_classes': len(class_names),
                'class_names': list(class_names),
                'class_dirs': class_dirs,
                'split': split_config,
                'counts': {
                    split: {d: int((labels[idx] == c).sum()) for c, d in enumerate(class_dirs)}
                    for split, idx in splits.items()
                },
                'totals': {split: int(len(idx)) for split, idx in splits.items()},
                'exact_duplicate_images': int(len(groups) - len(np.unique(groups))),
            }
            # meta.json last: its presence marks a complete tree.
            (tmp_dir / META_FILENAME).write_text(json.dumps(meta, indent=2) + '\n')

            try:
                _install_tree(tmp_dir, root)
            except OSError:
                # Another process may have finished the same build first; accept its tree if it is valid.
                if _cache_is_valid(root, expected_sha256, split_config):
                    return root
                raise
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)  # no-op after a successful rename
    return root
