"""One reading of ``--device`` (``biossl.device.resolve_device``) for every command that runs a model.

A device torch cannot parse (``cdua``) or does not have (``cuda`` on a machine without a GPU) used to
end ``biossl embed`` / ``finetune`` / ``cache-features`` in a RuntimeError or AssertionError traceback
from the first ``.to(device)``; now it is one line naming the option, exit code 2, before any work.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from biossl.cli import main
from biossl.data.tiling import tile_slide
from biossl.device import resolve_device
from biossl.errors import InputError

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def test_auto_and_names() -> None:
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(" AUTO ") == resolve_device("auto")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("meta")) == torch.device("meta")  # a device object is taken as given


def test_bad_devices_name_the_option() -> None:
    with pytest.raises(InputError, match=r"--device 'cdua' is not a device; use auto \(CUDA if available\), cpu"):
        resolve_device("cdua")
    with pytest.raises(InputError, match="device= 'cuda:x' is not a device"):
        resolve_device("cuda:x", option="device=")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(InputError, match="--device cuda:99: torch sees|--device cuda:99: torch sees no CUDA"):
        resolve_device("cuda:99")
    if n == 0:
        with pytest.raises(InputError, match="torch sees no CUDA GPU on this machine; use --device cpu"):
            resolve_device("cuda")


@pytest.fixture(scope="module")
def coords(fixtures: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("coords")
    tile_slide(fixtures / "wsi" / "he_small.svs", out)
    return out


def _bad_device_cases(tmp: Path, demo: Path, coords: Path) -> dict[str, list[str]]:
    missing = str(tmp / "never_read.ckpt")  # the device is checked before the checkpoint is opened
    manifest, labels = str(demo / "manifest.csv"), str(demo / "labels.csv")
    return {
        "embed": ["embed", "--checkpoint", missing, "--manifest", manifest, "--out", str(tmp / "e.h5ad")],
        "finetune": ["finetune", "--checkpoint", missing, "--manifest", manifest, "--labels", labels,
                     "--task", "subtype", "--label-column", "subtype", "--mode", "finetune",
                     "--out", str(tmp / "f.json")],
        "cache-features": ["cache-features", str(coords), "--out", str(tmp / "features"), "--encoder",
                           "image/vit_tiny", "--encoder-arg", "img_size=64", "--num-workers", "0", "--no-progress"],
    }


@pytest.mark.parametrize("device", ["cdua", pytest.param("cuda", marks=NO_CUDA), "cuda:99"])
@pytest.mark.parametrize("verb", ["embed", "finetune", "cache-features"])
def test_every_command_refuses_a_bad_device_in_one_line(verb: str, device: str, tmp_path: Path, demo_cohort: Path,
                                                        coords: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = _bad_device_cases(tmp_path, demo_cohort, coords)[verb]
    assert main([*argv, "--device", device]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--device {device}" in err.replace("'", ""), err
    assert "Traceback" not in err
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # nothing written
