"""The command line's rules, checked on every verb of :data:`biossl.cli.VERBS` (issue 16).

1. every ``--help`` shows the defaults of its options and an ``examples:`` section;
2. ``-v``/``-q`` work before and after every verb, ``pretrain`` included;
3. each shared option (:data:`biossl.commands.options.SHARED`) has one spelling, type and metavar everywhere;
4. a captured run prints no log line twice and no third-party tips.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from biossl import cli, logs
from biossl.commands.options import SHARED, HelpFormatter, has_default
from biossl.progress import progress_enabled, set_progress

VERBS = list(cli.VERBS)
PARSED = [v for v in VERBS if v not in cli.PASSTHROUGH]

#: The least each verb needs to parse (its run() is replaced in these tests).
MINIMAL: dict[str, list[str]] = {
    "tile": ["slide.svs", "--out", "tiles"],
    "cohort": ["manifest.csv"],
    "demo": [],
    "pretrain": ["--config", "tiny.yaml"],
    "cache-features": ["tiles", "--encoder", "image/vit_tiny", "--out", "features"],
    "list": ["encoders"],
    "embed": ["--checkpoint", "last.ckpt", "--manifest", "manifest.csv", "--out", "e.h5ad"],
    "finetune": ["--labels", "labels.csv", "--task", "subtype", "--out", "r.json"],
    "audit": ["--columns", "site", "--out", "audit"],
    "retrieval": ["--embeddings", "e.h5ad", "--out", "r.json"],
    "export": ["--checkpoint", "last.ckpt", "--modality", "wsi", "--out", "enc"],
}

#: verb -> the shared options it takes (audit embeds from a checkpoint as embed does: --device, --features-dir,
#: --skip-bad).
TAKES: dict[str, set[str]] = {
    "tile": {"out"},
    "cohort": {"skip_bad"},
    "demo": {"out", "manifest", "labels"},
    "cache-features": {"out", "checkpoint", "batch_size", "num_workers", "device"},
    "list": set(),
    "embed": {"checkpoint", "manifest", "out", "labels", "work_dir", "features_dir", "batch_size", "num_workers",
              "seed", "max_instances", "skip_bad", "device", "pseudonymize", "salt_file"},
    "finetune": {"labels", "out", "pseudonymize", "salt_file", "seed", "checkpoint", "manifest", "work_dir",
                 "features_dir", "skip_bad", "max_instances", "device", "batch_size"},
    "audit": {"checkpoint", "manifest", "labels", "work_dir", "features_dir", "max_instances", "skip_bad", "device",
              "seed", "out", "pseudonymize", "salt_file"},
    "retrieval": {"out"},
    "export": {"checkpoint", "out"},
}


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """-v/-q set process-wide levels and the progress switch: put them back for the other tests."""
    root, package = logging.getLogger(), logging.getLogger("biossl")
    levels = root.level, package.level
    yield
    root.setLevel(levels[0])
    package.setLevel(levels[1])
    set_progress(None)


def _option_help(action: argparse.Action) -> str:
    return (HelpFormatter("biossl")._get_help_string(action) or "").replace("%(default)s", "")


# 1. --help: defaults and examples -------------------------------------------------------------------------------


@pytest.mark.parametrize("verb", PARSED)
def test_help_shows_defaults_and_examples(verb: str) -> None:
    parser = cli.verb_parser(verb)
    text = parser.format_help()
    assert "\nexamples:\n  biossl " + verb in text
    with_default = [a for a in parser._actions if has_default(a)]
    for action in with_default:
        assert "default" in _option_help(action), f"biossl {verb} {action.option_strings}: no default in its help"
    for action in parser._actions:
        said = _option_help(action)
        assert said.count("default") <= 1 or "(default" not in said, f"biossl {verb} {action.option_strings}: twice"
    assert "(default: None)" not in text and "(default: False)" not in text


def test_top_level_help_has_examples_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "examples:\n  biossl demo" in text
    assert "3    biossl audit: INCOMPLETE, a key or column could not be tested" in text
    assert "-q, --quiet" in text and "-v, --verbose" in text


@pytest.mark.parametrize("position", ["before", "after"])
def test_pretrain_help_has_defaults_examples_and_hyphenated_flags(position: str,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["-v", "pretrain", "--help"] if position == "before" else ["pretrain", "-v", "--help"]
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "usage: biossl pretrain" in text
    assert "\nexamples:\n  biossl pretrain --config configs/pretrain/demo.yaml" in text
    assert "default: 50" in text  # --checkpoint-every
    assert "--checkpoint-every" in text and "--checkpoint_every" not in text  # the old spelling is hidden
    assert "--checkpoint CKPT_PATH, --resume CKPT_PATH" in text


# 2. -v / -q before and after every verb -------------------------------------------------------------------------


@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize("flag, expected", [("-v", logs.DEBUG), ("--verbose", logs.DEBUG), ("-vv", logs.DEBUG_ALL),
                                            ("-q", logs.QUIET), ("--quiet", logs.QUIET)])
@pytest.mark.parametrize("position", ["before", "after"])
def test_verbosity_before_and_after_every_verb(verb: str, flag: str, expected: int, position: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []
    module = importlib.import_module(f"biossl.commands.{cli.VERBS[verb]}")
    if verb in cli.PASSTHROUGH:
        monkeypatch.setattr(module, "main", lambda argv: seen.append(list(argv)) or 0)
    else:
        monkeypatch.setattr(module, "run", lambda args: seen.append(args) or 0)
    argv = [flag, verb, *MINIMAL[verb]] if position == "before" else [verb, *MINIMAL[verb], flag]
    assert cli.main(argv) == 0
    assert len(seen) == 1 and logs.verbosity() == expected
    assert progress_enabled() is (expected != logs.QUIET)
    if verb in cli.PASSTHROUGH:
        assert seen[0] == MINIMAL[verb]  # -v/-q are biossl's: LightningCLI never sees them
    assert logging.getLogger("biossl").getEffectiveLevel() == (
        logging.WARNING if expected == logs.QUIET else logging.DEBUG)


@pytest.mark.parametrize("verb", ["embed", "pretrain"])
def test_quiet_and_verbose_together_exit_2(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["-q", verb, *MINIMAL[verb], "-v"]) == 2
    assert "-q (quiet) and -v (verbose)" in capsys.readouterr().err


# 3. shared options: one spelling --------------------------------------------------------------------------------


@pytest.mark.parametrize("verb", PARSED)
def test_shared_options_have_one_spelling(verb: str) -> None:
    parser = cli.verb_parser(verb)
    by_flag = {flag: name for name, option in SHARED.items() for flag in option.flags}
    found: set[str] = set()
    for action in parser._actions:
        names = {by_flag[s] for s in action.option_strings if s in by_flag}
        if not names:
            continue
        (name,) = names
        option = SHARED[name]
        found.add(name)
        assert tuple(action.option_strings) == option.flags, f"biossl {verb}: {action.option_strings}"
        assert action.dest == (option.dest or name)
        assert action.metavar == option.metavar and action.type is option.type
        assert isinstance(action, argparse._StoreTrueAction) == (option.action == "store_true")
    assert found == TAKES[verb]


def test_audit_embeds_like_embed() -> None:
    """``audit --checkpoint`` takes embed's --device, --features-dir and --skip-bad (it always used the CPU)."""
    args = cli.build_parser("audit").parse_args(["audit", *MINIMAL["audit"], "--device", "cuda:1", "--features-dir",
                                                 "feats", "--skip-bad"])
    assert (args.device, args.features_dir, args.skip_bad) == ("cuda:1", Path("feats"), True)


# 4. a captured run: no line twice, no tips ----------------------------------------------------------------------

LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) (\S+): (.*)$")


def _pretrain(tmp_path: Path, config: str, demo_cohort: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "tiny.yaml").write_text(config.replace("max_steps: 1", "max_steps: 2"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "biossl.cli", *flags, "--config", str(tmp_path / "tiny.yaml"), "--data.manifest",
            str(demo_cohort / "manifest.csv"), "--data.work_dir", str(tmp_path / "work"),
            "--trainer.default_root_dir", str(tmp_path / "run")]
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)


def test_verbose_pretrain_prints_each_line_once_without_tips(tmp_path: Path, tiny_pretrain_config: str,
                                                             demo_cohort: Path) -> None:
    done = _pretrain(tmp_path, tiny_pretrain_config, demo_cohort, "-v", "pretrain", "--checkpoint_every", "1")
    assert done.returncode == 0, done.stderr[-2000:]
    text = done.stdout + done.stderr
    assert "Tip" not in text and "litlogger" not in text and "litmodels" not in text
    assert not re.search(r"^(INFO|WARNING): ", text, re.M), "a line printed by Lightning's own handler"
    lines = [m.group(1, 2, 3) for m in map(LOG_LINE.match, text.splitlines()) if m]
    repeated = [line for line, n in Counter(lines).items() if n > 1]
    assert not repeated, repeated
    assert any(name.startswith("lightning") for _, name, _ in lines)  # Lightning's lines come, once, as ours
    assert any(level == "DEBUG" and name.startswith("biossl") for level, name, _ in lines)
    assert {"step000001.ckpt", "step000002.ckpt"} <= {p.name for p in (tmp_path / "run" / "checkpoints").iterdir()}


def test_quiet_pretrain_prints_warnings_only(tmp_path: Path, tiny_pretrain_config: str, demo_cohort: Path) -> None:
    done = _pretrain(tmp_path, tiny_pretrain_config, demo_cohort, "pretrain", "-q", "--checkpoint-every", "1")
    assert done.returncode == 0, done.stderr[-2000:]
    levels = {m.group(1) for m in map(LOG_LINE.match, (done.stdout + done.stderr).splitlines()) if m}
    assert levels <= {"WARNING", "ERROR"}
    assert "tiling:" not in done.stderr and "it/s" not in done.stderr  # no progress bars
    assert (tmp_path / "run" / "checkpoints" / "step000001.ckpt").is_file()
