"""Hand-laid Hugging Face hub caches for offline tests (no network: HF_HUB_OFFLINE is forced on)."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Dict, Union

REVISION = '0123456789abcdef0123456789abcdef01234567'


def lay_out_repo(cache_dir: Union[str, Path], repo_id: str, files: Dict[str, Union[str, Path, bytes]],
                 revision: str = REVISION) -> Path:
    """Create ``<cache>/models--org--name/{refs/main, snapshots/<rev>/<files>}`` and return the snapshot dir.

    ``files`` maps a file name in the repo to a source path (copied) or to bytes (written)."""
    repo_dir = Path(cache_dir) / ('models--' + repo_id.replace('/', '--'))
    snap = repo_dir / 'snapshots' / revision
    snap.mkdir(parents=True, exist_ok=True)
    (repo_dir / 'refs').mkdir(parents=True, exist_ok=True)
    (repo_dir / 'refs' / 'main').write_text(revision)
    for name, src in files.items():
        dst = snap / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(src, bytes):
            dst.write_bytes(src)
        else:
            shutil.copy(src, dst)
    return snap


def go_offline(monkeypatch, cache_dir: Union[str, Path]) -> None:
    """Point huggingface_hub at ``cache_dir`` and forbid network access, for this test only."""
    import huggingface_hub.constants as hc
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('HF_HUB_CACHE', str(cache_dir))
    monkeypatch.setattr(hc, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(hc, 'HF_HUB_CACHE', str(cache_dir))
