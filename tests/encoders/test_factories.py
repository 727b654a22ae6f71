"""Registered encoder factories forward every option their model takes, so a config can set it.

A config names an encoder and its options (``model.modalities.<m>: {encoder: ..., dropout: 0.1}``);
they reach the model only through the registered factory. A factory that lists its own keywords and
forgets one (``sequence/transformer`` once dropped ``dropout``) makes that option unusable from a
config. These tests read each model class's keyword options (and those of the feature extractor it
wraps) and build every registered image, sequence and features encoder with each of them.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
from torch import nn

from biossl.encoders import ENCODERS
from biossl.modules.pretrain import PretrainModule

#: Families checked here (expression/* has its own owner and tests).
FAMILIES = ("image/", "sequence/", "features/", "table/", "expression/")
#: Small required inputs per family, so that building stays fast.
BASE: dict[str, dict[str, Any]] = {"image/": {"img_size": 32, "patch_size": 16}, "sequence/": {},
                                   "features/": {"in_dim": 8}, "table/": {"n_genes": 8}, "expression/": {"n_genes": 8}}
#: Options a class accepts on purpose without using them (name, option) -> why.
IGNORED = {("sequence/dilated_cnn", "max_len"): "accepted for a signature shared with the transformer; no length limit"}
#: Valid values to try, per option whose value a module keeps as an attribute (the first one that differs).
OTHER: dict[str, tuple[Any, ...]] = {"mask_ratio": (0.5, 0.25), "max_len": (256, 128), "embed_dim": (32, 16),
                                     "noise_std": (0.3, 0.2), "visible_weight": (0.3, 0.2),
                                     "norm_pix_loss": (False, True)}


def names() -> list[str]:
    return [n for n in ENCODERS.names() if n.startswith(FAMILIES)]


def base(name: str) -> dict[str, Any]:
    return dict(BASE[name.split("/")[0] + "/"])


def options(model: nn.Module) -> dict[str, Any]:
    """Keyword options with a default of the model's class and of the biossl modules inside it."""
    out: dict[str, Any] = {}
    classes = [type(m) for m in model.modules() if type(m).__module__.startswith("biossl.encoders")]
    for cls in dict.fromkeys(classes):
        for p in inspect.signature(cls.__init__).parameters.values():  # type: ignore[misc]
            if p.name != "self" and p.default is not p.empty and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
                out.setdefault(p.name, p.default)
    return out


def kept_values(model: nn.Module, option: str) -> list[Any]:
    return [getattr(m, option) for m in model.modules() if option in vars(m)]


def encoder_dropouts(model: nn.Module) -> set[float]:
    """Rates of the dropout layers outside the model's pretext objective (e.g. the MAE decoder)."""
    objective = getattr(model, "objective", None)
    inside = {id(m) for m in objective.modules()} if isinstance(objective, nn.Module) else set()
    return {m.p for m in model.modules() if isinstance(m, nn.Dropout) and id(m) not in inside}


def test_the_families_are_registered() -> None:
    assert {n.split("/")[0] for n in names()} == {"image", "sequence", "features", "table", "expression"}


@pytest.mark.parametrize("name", names())
def test_every_option_of_the_model_is_accepted_by_its_factory(name: str) -> None:
    model = ENCODERS.build(name, **base(name))
    opts = options(model)
    assert opts, f"{name}: no keyword options found on {type(model).__name__}"
    for option, default in opts.items():
        try:
            ENCODERS.build(name, **base(name), **{option: default})
        except TypeError as exc:
            pytest.fail(f"{name}: the registered factory does not forward {option!r} of {type(model).__name__}: {exc}")


@pytest.mark.parametrize("name", names())
def test_options_the_model_keeps_reach_it(name: str) -> None:
    default = ENCODERS.build(name, **base(name))
    checked = 0
    for option in options(default):
        if (name, option) in IGNORED or option not in OTHER or option in base(name):
            continue
        before = kept_values(default, option)
        if not before:
            continue
        value = next(v for v in OTHER[option] if v not in before)
        built = ENCODERS.build(name, **base(name), **{option: value})
        assert value in kept_values(built, option), f"{name}: {option}={value!r} did not reach the model"
        checked += 1
    assert checked or name.startswith("image/swin") or name.startswith("image/resnet"), name


@pytest.mark.parametrize("name", names())
def test_dropout_reaches_the_model(name: str) -> None:
    model = ENCODERS.build(name, **base(name))
    if "dropout" not in options(model):
        pytest.skip(f"{type(model).__name__} takes no dropout")
    assert encoder_dropouts(model) <= {0.0}
    rates = encoder_dropouts(ENCODERS.build(name, **base(name), dropout=0.3))
    assert rates == {0.3}, f"{name}: dropout=0.3 gave dropout layers {rates}"


def test_a_config_sets_the_sequence_transformer_dropout() -> None:
    """Through the pretraining module's modality spec, as a YAML config gives it."""
    module = PretrainModule({"sequence": {"encoder": "sequence/transformer", "max_len": 64, "embed_dim": 16,
                                          "heads": 2, "depth": 1, "dropout": 0.2}}, embed_dim=8)
    module.configure_model()
    assert encoder_dropouts(module.encoders["sequence"]) == {0.2}
    torch.manual_seed(0)
    x = torch.randint(1, 5, (2, 64))
    assert module.encoders["sequence"].embed(x).shape == (2, 16)
