"""VolumeCache: a cached volume is not read again; stale entries are not served."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import biossl.data.volume as volume_module
from biossl.data.volume import VolumeSpec, load_volume
from biossl.data.volume_cache import VolumeCache

SPEC = VolumeSpec(kind="mri", spacing=(4.0, 4.0, 4.0))


class CountingLoader:
    def __init__(self) -> None:
        self.paths: list[Path] = []

    def __call__(self, path: Path, spec: VolumeSpec) -> np.ndarray:
        self.paths.append(path)
        return load_volume(path, spec)


@pytest.fixture()
def scan(fixtures: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "anatomical.nii"
    shutil.copy(fixtures / "volume" / "anatomical.nii", dst)
    return dst


def test_second_load_does_not_call_the_reader(scan: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[Path] = []
    real_read = volume_module._read_raw

    def counting_read(path: Path) -> tuple[np.ndarray, np.ndarray]:
        reads.append(path)
        return real_read(path)

    monkeypatch.setattr(volume_module, "_read_raw", counting_read)
    cache = VolumeCache(max_items=4)
    first = cache.load(scan, SPEC)
    second = cache.load(str(scan), SPEC)
    assert len(reads) == 1 and (cache.hits, cache.misses) == (1, 1)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, load_volume(scan, SPEC))
    first[:] = -1.0  # callers get copies: the cached array is untouched
    assert cache.load(scan, SPEC).min() == 0.0


def test_disk_cache_is_shared_between_instances(scan: Path, tmp_path: Path) -> None:
    loader = CountingLoader()
    cache_dir = tmp_path / "cache"
    expected = VolumeCache(cache_dir, loader=loader).load(scan, SPEC)
    files = list(cache_dir.iterdir())
    assert [f.suffix for f in files] == [".npy"]  # no temporary file left behind
    worker = VolumeCache(cache_dir, max_items=0, loader=loader)  # e.g. a DataLoader worker
    np.testing.assert_array_equal(worker.load(scan, SPEC), expected)
    assert len(loader.paths) == 1 and worker.hits == 1


def test_changed_file_or_spec_is_reloaded(scan: Path, tmp_path: Path) -> None:
    loader = CountingLoader()
    cache = VolumeCache(tmp_path / "cache", loader=loader)
    cache.load(scan, SPEC)
    cache.load(scan, VolumeSpec(kind="mri", spacing=(2.0, 2.0, 2.0)))
    assert len(loader.paths) == 2
    stat = scan.stat()
    os.utime(scan, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    cache.load(scan, SPEC)
    assert len(loader.paths) == 3
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 3


def test_lru_evicts_oldest(scan: Path, fixtures: Path) -> None:
    loader = CountingLoader()
    other = fixtures / "volume" / "anatomical_label.nii.gz"
    cache = VolumeCache(max_items=1, loader=loader)
    mask = VolumeSpec(kind="none", interpolation="nearest")
    cache.load(scan, SPEC)
    cache.load(other, mask)
    cache.load(other, mask)
    cache.load(scan, SPEC)
    assert [p.name for p in loader.paths] == ["anatomical.nii", "anatomical_label.nii.gz", "anatomical.nii"]


def test_dicom_folder_key_changes_when_a_slice_changes(fixtures: Path, tmp_path: Path) -> None:
    folder = tmp_path / "series"
    shutil.copytree(fixtures / "volume" / "CT_DICOM", folder)
    cache = VolumeCache()
    before = cache.key(folder, SPEC)
    assert cache.key(folder, SPEC) == before
    (folder / "7106").unlink()
    assert cache.key(folder, SPEC) != before



def test_dicom_folder_key_changes_when_a_slice_is_rewritten_with_its_old_size_and_time(fixtures: Path,
                                                                                        tmp_path: Path) -> None:
    """``cp`` of another slice of the same size onto one, then ``touch -r``: only the ctime tells."""
    folder = tmp_path / "series"
    shutil.copytree(fixtures / "volume" / "CT_DICOM", folder)
    slices = sorted(p for p in folder.iterdir() if p.is_file())
    sizes: dict[int, list[Path]] = {}
    for p in slices:
        sizes.setdefault(p.stat().st_size, []).append(p)
    same = next((group for group in sizes.values() if len(group) > 1), None)
    if same is None:
        pytest.skip("no two slices of one size in the fixture")
    target, other = same[:2]
    cache = VolumeCache()
    before = cache.key(folder, SPEC)
    old = target.stat()
    target.write_bytes(other.read_bytes())
    os.utime(target, ns=(old.st_atime_ns, old.st_mtime_ns))
    os.utime(folder, ns=(folder.stat().st_atime_ns, folder.stat().st_mtime_ns))
    assert target.stat().st_size == old.st_size and target.stat().st_mtime_ns == old.st_mtime_ns
    assert cache.key(folder, SPEC) != before

def test_corrupt_cache_file_is_recomputed(
    scan: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    loader = CountingLoader()
    cache = VolumeCache(tmp_path / "cache", max_items=0, loader=loader)
    expected = cache.load(scan, SPEC)
    (tmp_path / "cache" / f"{cache.key(scan, SPEC)}.npy").write_bytes(b"half-written")
    np.testing.assert_array_equal(cache.load(scan, SPEC), expected)
    assert len(loader.paths) == 2 and "unreadable cache file" in caplog.text
