"""``biossl export``: write one modality's (adapted) encoder of a checkpoint so that other tools can use it.

An encoder that came from a Hugging Face folder (it has ``write_pretrained(folder)``) is written as a
``save_pretrained`` folder; any other as ``encoder.safetensors`` (``encoder.pt`` where safetensors cannot
hold its weights, e.g. tied tensors), a plain ``state_dict``. Both get ``spec.json`` (the registry name
and options that rebuild it, its width, kind, and what the data fixed: value type, feature vocabulary,
categories, tokeniser, feature width, bag spec; the biossl version and the checkpoint's SHA-256) and a
``README.md`` saying how to rebuild it. The folder is written beside ``--out`` under a temporary name and
renamed when complete; an existing ``--out`` is refused unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from biossl import __version__
from biossl.errors import InputError

logger = logging.getLogger(__name__)

#: The state-dict file names, by format.
SAFETENSORS, TORCH = "encoder.safetensors", "encoder.pt"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the verb's arguments to ``parser``."""
    from biossl.commands.options import add_shared

    add_shared(parser, "checkpoint", required=("checkpoint",))
    parser.add_argument("--modality", required=True, metavar="NAME", help="the modality whose encoder is written")
    add_shared(parser, "out", required=("out",), help={"out": "output folder (must not exist, unless --overwrite)"})
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _plain(value: Any) -> Any:
    """``value`` as JSON values (tuples as lists, tensors and numpy scalars as numbers, paths as text)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def build_spec(ckpt: dict[str, Any], checkpoint: Path, modality: str, spec: Mapping[str, Any],
               encoder: torch.nn.Module, weights: str) -> dict[str, Any]:
    """The ``spec.json`` of an exported encoder (see the module docstring)."""
    from biossl.encoders.patient import SPEC_KEYS
    from biossl.plugins import records

    state = ckpt["biossl"]
    data = dict((state.get("modalities") or {}).get(modality) or {})
    name = str(spec["encoder"])
    plugin = [r for r in records() if f"encoder {name}" in r.get("provides", [])]
    return _plain({
        "format": "save_pretrained" if weights == "save_pretrained" else "state_dict",
        "weights": weights,
        "modality": modality,
        "kind": spec.get("kind"),
        "encoder": name,
        "options": {k: v for k, v in spec.items() if k not in SPEC_KEYS},
        "embed_dim": int(getattr(encoder, "embed_dim", 0)),
        "value_type": data.get("value_type"),
        "vocabulary": data.get("vocabulary"),
        "categories": data.get("categories"),
        "data_state": data,
        "bag_spec": state.get("bag_spec") or {},
        "plugins": plugin,
        "biossl_version": __version__,
        "checkpoint": str(checkpoint.resolve()),
        "checkpoint_sha256": _sha256(checkpoint),
        "checkpoint_biossl_version": state.get("version"),
    })


README = """\
# {modality}: the `{encoder}` encoder of a biossl checkpoint

Written by `biossl export` (biossl {version}) from `{checkpoint}` (SHA-256 `{sha}`).
Kind `{kind}`; instance embeddings are {embed_dim} wide. `spec.json` holds the registry name, the options,
and what the data fixed (value type, feature vocabulary, tokeniser, feature width, bag spec).

{how}
"""

HOW_STATE = """\
Rebuild it with biossl installed{plugin}:

```python
import json
import torch
from biossl.encoders import ENCODERS
{load_import}
spec = json.load(open("{out}/spec.json"))
encoder = ENCODERS.build(spec["encoder"], **spec["options"])
encoder.load_state_dict({load_call})
encoder.eval()
with torch.inference_mode():
    z = encoder.embed(x)  # x: a batch of instances as biossl feeds them; z: [N, spec["embed_dim"]]
```

The inputs are those biossl feeds this kind (tiles float [N, 3, H, W] in [0, 1] at `bag_spec.tile_px`;
volume patches [N, 1, D, H, W]; table rows [N, len(vocabulary)], counts as normalize_total(1e4)+log1p;
DNA windows [N, L] of biossl's nucleotide ids; feature vectors [N, D]). The weights are a plain
`state_dict` (the encoder's masked-modelling decoder included), readable without biossl.
"""

HOW_PRETRAINED = """\
This folder was written by the encoder's `write_pretrained` (a `save_pretrained` folder of the model
it was adapted from): load it with that library, e.g. `transformers.AutoModel.from_pretrained("{out}")`.
"""


def _write_folder(tmp: Path, ckpt: dict[str, Any], checkpoint: Path, modality: str, spec: dict[str, Any],
                  encoder: torch.nn.Module, out: Path) -> str:
    """Write the encoder, ``spec.json`` and ``README.md`` into ``tmp``; return the weights' name."""
    export = getattr(encoder, "write_pretrained", None)
    if callable(export):
        export(tmp)
        weights = "save_pretrained"
    else:
        state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
        try:
            from safetensors.torch import save_file

            save_file(state, str(tmp / SAFETENSORS), metadata={"biossl_encoder": str(spec["encoder"])})
            weights = SAFETENSORS
        except (ImportError, RuntimeError, ValueError) as exc:  # tied tensors, or no safetensors
            logger.info("safetensors cannot hold these weights (%s); writing %s", exc, TORCH)
            with contextlib.suppress(FileNotFoundError):
                (tmp / SAFETENSORS).unlink()
            torch.save(state, tmp / TORCH)
            weights = TORCH
    info = build_spec(ckpt, checkpoint, modality, spec, encoder, weights)
    (tmp / "spec.json").write_text(json.dumps(info, indent=1) + "\n")
    if weights == "save_pretrained":
        how = HOW_PRETRAINED.format(out=out)
    else:
        plugin = (f", after importing its plug-in module ({', '.join(p['module'] for p in info['plugins'])}; "
                  "`biossl.plugins.load_plugin(name_or_file)` does it)") if info["plugins"] else ""
        load_import = "from safetensors.torch import load_file" if weights == SAFETENSORS else ""
        load_call = (f'load_file("{out}/{SAFETENSORS}")' if weights == SAFETENSORS
                     else f'torch.load("{out}/{TORCH}", weights_only=True)')
        how = HOW_STATE.format(out=out, plugin=plugin, load_import=load_import, load_call=load_call)
    (tmp / "README.md").write_text(README.format(
        modality=modality, encoder=info["encoder"], version=__version__, checkpoint=info["checkpoint"],
        sha=info["checkpoint_sha256"], kind=info["kind"], embed_dim=info["embed_dim"], how=how))
    return weights


def run(args: argparse.Namespace) -> int:
    """Write the modality's encoder into ``--out``; print one line naming what was written."""
    from biossl.checkpoint import load_checkpoint
    from biossl.encoders.patient import PatientEncoder
    from biossl.io import atomic_dir

    out: Path = args.out
    if out.exists() and not args.overwrite:
        raise InputError(f"--out {out} exists; pass --overwrite to replace it, or choose another folder")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file, not a folder; choose another --out")
    ckpt = load_checkpoint(args.checkpoint)
    specs = ckpt["biossl"]["modality_specs"]
    if args.modality not in specs:
        raise InputError(f"checkpoint {args.checkpoint} has no modality {args.modality!r} (its modalities: "
                         f"{', '.join(specs) or 'none'}); fix --modality")
    model = PatientEncoder.from_loaded(ckpt, args.checkpoint, modalities=[args.modality])
    encoder, spec = model.encoders[args.modality], model.modality_specs[args.modality]
    try:
        with atomic_dir(out, replace=args.overwrite) as tmp:
            weights = _write_folder(tmp, ckpt, Path(args.checkpoint), args.modality, spec, encoder, out.resolve())
    except FileExistsError:
        raise InputError(f"--out {out} exists; pass --overwrite to replace it, or choose another folder") from None
    n = sum(p.numel() for p in encoder.parameters())
    print(f"{args.modality}: encoder {spec['encoder']} ({n:,} parameters, embed_dim {encoder.embed_dim}) -> "
          f"{out}/{weights if weights != 'save_pretrained' else ''} + spec.json")
    return 0
