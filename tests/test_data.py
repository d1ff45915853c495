"""Animal-MNIST data module, offline: a small fake wheel stands in for the real ``animal_mnist-0.4`` wheel.

The fake wheel has the real internal layout (same member paths, gzip pickles of numpy arrays written with
protocol 4 like the real ones); pip and the network are never used here.
"""
import builtins
import gzip
import hashlib
import io
import json
import os
import pickle
import pickletools
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import timm.data

import timm_ssm_prune.data.animal_mnist as am
from timm_ssm_prune.data import (
    CLASS_NAMES, ChecksumError, default_root, duplicate_groups, load_arrays, prepare_animal_mnist, stratified_split,
)

N_CLASSES = 10
PER_CLASS = 30
N_VAL = 6  # per class in the fake data -> 24 train / 6 val per class


# ----------------------------------------------------------------------------------------------------------------
# Fake wheel helpers
# ----------------------------------------------------------------------------------------------------------------
def _old_numpy_spelling(data: bytes) -> bytes:
    """Rewrite a protocol-4 pickle so that it names ``numpy.core.multiarray`` (numpy 1.x, as in the real files).

    numpy 2 writes ``numpy._core.multiarray``; the stream is re-emitted opcode by opcode without its (optional)
    FRAME opcodes, so that changing the length of one string does not invalidate a frame length.
    """
    ops = list(pickletools.genops(data))
    out = bytearray()
    for k, (op, arg, pos) in enumerate(ops):
        end = ops[k + 1][2] if k + 1 < len(ops) else len(data)
        if op.name == 'FRAME':
            continue
        if op.name == 'SHORT_BINUNICODE' and arg == 'numpy._core.multiarray':
            new = b'numpy.core.multiarray'
            out += b'\x8c' + bytes([len(new)]) + new
            continue
        out += data[pos:end]
    return bytes(out)


def _gz_pickle(obj, old_spelling=False) -> bytes:
    data = pickle.dumps(obj, protocol=4)
    if old_spelling:
        data = _old_numpy_spelling(data)
    return gzip.compress(data)


def _fake_arrays(per_class=PER_CLASS, seed=123):
    """Random 28x28 images, labels sorted like the real file; image 1 duplicates image 0 (same class)."""
    rng = np.random.default_rng(seed)
    counts = [per_class] * N_CLASSES if np.isscalar(per_class) else list(per_class)
    labels = np.repeat(np.arange(N_CLASSES), counts).astype(np.int64)
    images = rng.integers(0, 256, size=(len(labels), 28, 28), dtype=np.uint8)
    images[1] = images[0]
    images[3] = images[2]
    return images, labels


def _write_wheel(path: Path, data_gz: bytes, label_gz: bytes) -> str:
    with zipfile.ZipFile(path, 'w') as zf:
        zf.writestr('animal_mnist/__init__.py', '')
        zf.writestr('animal_mnist/data/__init__.py', '')
        zf.writestr(am.DATA_MEMBER, data_gz)
        zf.writestr(am.LABEL_MEMBER, label_gz)
        zf.writestr('animal_mnist-0.4.dist-info/METADATA', 'Name: animal_mnist\nVersion: 0.4\n')
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def fake_wheel(tmp_path):
    images, labels = _fake_arrays()
    wheel = tmp_path / 'wheels' / am.WHEEL_FILENAME
    wheel.parent.mkdir()
    # Images with the numpy 1.x global names (like the real file), labels with the numpy 2.x ones.
    sha = _write_wheel(wheel, _gz_pickle(images, old_spelling=True), _gz_pickle(labels))
    return wheel, sha, images, labels


def _build(root, fake_wheel, **kw):
    wheel, sha, _, _ = fake_wheel
    kw.setdefault('n_val_per_class', N_VAL)
    return prepare_animal_mnist(root, wheel_path=wheel, expected_sha256=sha, progress=False, **kw)


def _tree_files(root: Path):
    return sorted(str(p.relative_to(root)) for p in root.rglob('*') if p.is_file())


def _index_of(path) -> int:
    return int(Path(path).stem)


# ----------------------------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------------------------
def test_fake_pickles_use_both_numpy_spellings(fake_wheel):
    """Guard for the helper itself: the fake files really exercise both spellings of ``_reconstruct``."""
    wheel = fake_wheel[0]
    with zipfile.ZipFile(wheel) as zf:
        data = gzip.decompress(zf.read(am.DATA_MEMBER))
        label = gzip.decompress(zf.read(am.LABEL_MEMBER))
    assert b'numpy.core.multiarray' in data and b'numpy._core' not in data
    assert b'numpy._core.multiarray' in label


def test_load_arrays(fake_wheel):
    wheel, sha, images, labels = fake_wheel
    x, y, names = load_arrays(wheel, expected_sha256=sha)
    assert x.dtype == np.uint8 and x.shape == (N_CLASSES * PER_CLASS, 28, 28)
    assert y.dtype == np.int64 and y.shape == (N_CLASSES * PER_CLASS,)
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)
    assert names == list(CLASS_NAMES) and len(names) == N_CLASSES


def test_build_tree_roundtrip_and_timm(tmp_path, fake_wheel):
    _, sha, images, labels = fake_wheel
    root = _build(tmp_path / 'am', fake_wheel)
    assert root == (tmp_path / 'am').absolute()

    meta = json.loads((root / 'meta.json').read_text())
    assert meta['wheel_sha256'] == sha
    assert meta['class_names'] == list(CLASS_NAMES)
    assert meta['license'] == 'MIT' and meta['source_url'] == 'https://pypi.org/project/animal-mnist/0.4/'
    assert meta['split']['seed'] == 0
    assert meta['totals'] == {'train': N_CLASSES * (PER_CLASS - N_VAL), 'val': N_CLASSES * N_VAL}

    class_dirs = [f'{i}_{n}' for i, n in enumerate(CLASS_NAMES)]
    assert sorted(os.listdir(root)) == ['meta.json', 'train', 'val']
    seen = []
    for split, per_class in (('train', PER_CLASS - N_VAL), ('val', N_VAL)):
        assert sorted(os.listdir(root / split)) == class_dirs
        for label, d in enumerate(class_dirs):
            files = sorted((root / split / d).iterdir())
            assert len(files) == per_class  # stratified
            for f in files:
                i = _index_of(f)
                assert labels[i] == label
                with Image.open(f) as im:
                    assert im.mode == 'L' and im.size == (28, 28)
                    np.testing.assert_array_equal(np.asarray(im), images[i])  # exact pixels
                seen.append(i)
    assert sorted(seen) == list(range(len(labels)))  # every image exactly once, train and val disjoint

    # timm reads the tree, and its class indices are the original labels.
    for split, n in (('train', N_CLASSES * (PER_CLASS - N_VAL)), ('val', N_CLASSES * N_VAL)):
        ds = timm.data.create_dataset('', root=str(root), split=split)
        assert len(ds) == n
        samples = ds.reader.samples
        assert [t for _, t in samples] == [int(labels[_index_of(p)]) for p, _ in samples]
        img, target = ds[0]
        assert target == labels[_index_of(samples[0][0])]
        np.testing.assert_array_equal(np.asarray(img)[..., 0], images[_index_of(samples[0][0])])


def test_split_is_deterministic(tmp_path, fake_wheel):
    a = _build(tmp_path / 'a', fake_wheel)
    b = _build(tmp_path / 'b', fake_wheel)
    assert _tree_files(a) == _tree_files(b)
    for rel in _tree_files(a):
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    c = _build(tmp_path / 'c', fake_wheel, seed=1)  # and the seed matters
    assert _tree_files(c) != _tree_files(a)


def test_duplicates_stay_in_one_split(tmp_path, fake_wheel):
    root = _build(tmp_path / 'am', fake_wheel)
    train = {_index_of(p) for p in (root / 'train').rglob('*.png')}
    val = {_index_of(p) for p in (root / 'val').rglob('*.png')}
    for pair in ((0, 1), (2, 3)):
        assert set(pair) <= train or set(pair) <= val
    groups = duplicate_groups(fake_wheel[2])
    assert groups[0] == groups[1] and groups[2] == groups[3] and len(set(groups)) == len(groups) - 2


def test_second_call_does_no_work(tmp_path, fake_wheel, monkeypatch):
    root = _build(tmp_path / 'am', fake_wheel)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob('*')}
    siblings = sorted(os.listdir(tmp_path))

    def fail(*args, **kwargs):
        raise AssertionError('cached call did work')

    for name in ('download_wheel', 'load_arrays', '_write_pngs', '_install_tree'):
        monkeypatch.setattr(am, name, fail)
    monkeypatch.setattr(am.subprocess, 'run', fail)
    assert _build(tmp_path / 'am', fake_wheel) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob('*')} == stamps
    assert sorted(os.listdir(tmp_path)) == siblings  # no temp dir either

    # force=True, or a different split, does rebuild.
    with pytest.raises(AssertionError, match='cached call did work'):
        _build(tmp_path / 'am', fake_wheel, force=True)
    with pytest.raises(AssertionError, match='cached call did work'):
        _build(tmp_path / 'am', fake_wheel, n_val_per_class=5)


def test_concurrent_builds_build_once(tmp_path, fake_wheel, monkeypatch):
    """Two builds started together (two trainings on a fresh machine): the second waits for the first and uses its
    tree instead of replacing it under the first one's readers."""
    import threading
    installs, started = [], threading.Barrier(2)
    real_install = am._install_tree

    def counting_install(tmp_dir, root):
        installs.append(root)
        real_install(tmp_dir, root)

    def both_started(root, *args):
        started.wait(timeout=30)  # both calls found no tree, then race for the build
        return False

    monkeypatch.setattr(am, '_install_tree', counting_install)
    real_valid = am._cache_is_valid
    calls = {'n': 0}

    def first_check_misses(root, *args):
        calls['n'] += 1
        if calls['n'] <= 2:  # each thread's first check, before the lock
            return both_started(root, *args)
        return real_valid(root, *args)

    monkeypatch.setattr(am, '_cache_is_valid', first_check_misses)
    results, errors = [], []

    def run():
        try:
            results.append(_build(tmp_path / 'am', fake_wheel))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(results) == 2 and results[0] == results[1]
    assert len(installs) == 1, f"the tree was built {len(installs)} times"
    assert real_valid(results[0], fake_wheel[1], json.loads((results[0] / am.META_FILENAME).read_text())['split'])


def test_incomplete_tree_is_rebuilt(tmp_path, fake_wheel):
    root = _build(tmp_path / 'am', fake_wheel)
    victim = next((root / 'val').rglob('*.png'))
    victim.unlink()
    _build(tmp_path / 'am', fake_wheel)
    assert victim.exists()


def test_interrupted_build_leaves_nothing(tmp_path, fake_wheel, monkeypatch):
    real_write = am._write_pngs

    def write_then_die(out_dir, *args, **kwargs):
        real_write(out_dir, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(am, '_write_pngs', write_then_die)
    with pytest.raises(KeyboardInterrupt):
        _build(tmp_path / 'am', fake_wheel)
    assert sorted(os.listdir(tmp_path)) == ['.am.lock', 'wheels']  # no root, no temp dir (the empty lock file stays)


def test_refuses_to_overwrite_foreign_folder(tmp_path, fake_wheel):
    root = tmp_path / 'am'
    root.mkdir()
    (root / 'precious.txt').write_text('keep me')
    with pytest.raises(FileExistsError, match='refusing to overwrite'):
        _build(root, fake_wheel)
    assert (root / 'precious.txt').read_text() == 'keep me'


def test_checksum_mismatch(tmp_path, fake_wheel):
    wheel, sha, _, _ = fake_wheel
    wrong = '0' * 64
    with pytest.raises(ChecksumError) as err:
        prepare_animal_mnist(tmp_path / 'am', wheel_path=wheel, expected_sha256=wrong, progress=False)
    msg = str(err.value)
    assert wrong in msg and sha in msg and str(wheel) in msg
    assert not (tmp_path / 'am').exists()
    with pytest.raises(ChecksumError):  # the real pinned digest does not match the fake wheel either
        load_arrays(wheel)


class _RunsShell:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _Evals:
    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return builtins.eval, (self.code,)


@pytest.mark.parametrize('member', ['data', 'label'])
@pytest.mark.parametrize('kind', ['os.system', 'builtins.eval'])
def test_malicious_pickle_is_refused(tmp_path, member, kind):
    marker = tmp_path / 'pwned'
    if kind == 'os.system':
        payload = _RunsShell(f'echo pwned > {marker}')
        refused = 'system'
    else:
        payload = _Evals(f"open({str(marker)!r}, 'w').write('pwned')")
        refused = 'builtins.eval'
    images, labels = _fake_arrays()
    data_gz, label_gz = _gz_pickle(images), _gz_pickle(labels)
    if member == 'data':
        data_gz = _gz_pickle(payload)
    else:
        label_gz = _gz_pickle({'labels': labels, 'x': payload})
    wheel = tmp_path / am.WHEEL_FILENAME
    sha = _write_wheel(wheel, data_gz, label_gz)

    with pytest.raises(pickle.UnpicklingError, match=refused):
        load_arrays(wheel, expected_sha256=sha)
    with pytest.raises(pickle.UnpicklingError, match='refusing to load global'):
        prepare_animal_mnist(tmp_path / 'am', wheel_path=wheel, expected_sha256=sha, progress=False)
    assert not marker.exists()  # the payload never ran
    assert not (tmp_path / 'am').exists()


def test_unpickler_refuses_non_arrays():
    # Only the four whitelisted globals resolve; a plain (global-free) object is rejected after loading.
    with pytest.raises(pickle.UnpicklingError, match=r'numpy\.load'):
        am.RestrictedNumpyUnpickler(io.BytesIO(pickle.dumps(np.load, protocol=4))).load()
    with pytest.raises(ValueError, match='expected a numpy ndarray'):
        am._load_numpy_pickle(gzip.compress(pickle.dumps([1, 2, 3])), 'x')


def test_split_sizes_balanced_and_unbalanced():
    # The real data: 10 x 1000 -> 8000 / 2000, 200 val per class.
    labels = np.repeat(np.arange(10), 1000)
    train, val = stratified_split(labels, 10)
    assert len(train) == 8000 and len(val) == 2000
    assert np.bincount(labels[val]).tolist() == [200] * 10
    assert not set(train) & set(val)

    # Unbalanced: proportional per class, totals still exact.
    counts = np.array([7, 13, 29, 31, 50, 64, 88, 101, 5, 12])
    labels = np.repeat(np.arange(10), counts)
    train, val = stratified_split(labels, 10, val_fraction=0.2)
    assert len(val) == round(0.2 * counts.sum()) and len(train) + len(val) == counts.sum()
    per_class = np.bincount(labels[val], minlength=10)
    assert np.all(np.abs(per_class - 0.2 * counts) < 1)

    with pytest.raises(ValueError):
        stratified_split(labels, 10, val_fraction=1.0)
    with pytest.raises(ValueError):
        stratified_split(labels, 10, n_val_per_class=5)  # class 8 has only 5 images


def test_default_root(monkeypatch, tmp_path):
    monkeypatch.setenv('TIMM_SSM_PRUNE_DATA', str(tmp_path / 'x'))
    assert default_root() == tmp_path / 'x'
    monkeypatch.delenv('TIMM_SSM_PRUNE_DATA')
    assert default_root() == Path.home() / '.cache' / 'timm_ssm_prune' / 'animal_mnist'
