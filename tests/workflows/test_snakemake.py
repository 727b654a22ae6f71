"""The Snakemake workflow (``workflows/``): lint, the config schema, the SLURM profile, and the demo cohort end to end.

The end-to-end run copies the demo cohort and its pretraining config into a temporary working directory
(the workflow's config paths are relative to it) and runs ``snakemake --cores 2 --directory <tmp>``
(about a minute on 2 cores).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("snakemake", reason="needs snakemake: pip install -e '.[workflow]' (or .[dev])")

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / "workflows"
SNAKEFILE = WORKFLOW / "Snakefile"
SCHEMA = WORKFLOW / "schemas" / "config.schema.yaml"
DEMO_CONFIG = WORKFLOW / "config" / "demo.yaml"
PROFILE = WORKFLOW / "profiles" / "slurm"
SOFTWARE_LINT = "Specify a conda environment or container for each rule."


def _env() -> dict[str, str]:
    """The test's environment with this interpreter's scripts (biossl, snakemake) first on PATH, one thread."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"
    return env


def snakemake(*args: str | Path, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    """Run snakemake on the workflow in ``cwd`` (its working directory) and return the finished process."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(cwd), *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def output_of(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit code {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}"


def demo_workdir(root: Path) -> Path:
    """A working directory holding what the demo config's relative paths name."""
    (root / "biossl").mkdir(parents=True)
    shutil.copytree(REPO / "biossl" / "demo_data", root / "biossl" / "demo_data")
    (root / "configs" / "pretrain").mkdir(parents=True)
    shutil.copy2(REPO / "configs" / "pretrain" / "demo.yaml", root / "configs" / "pretrain" / "demo.yaml")
    return root


def overlay(path: Path, config: dict[str, object]) -> Path:
    """Write a config file that snakemake merges over the demo config (later --configfile wins)."""
    path.write_text(yaml.safe_dump(config))
    return path


def audit_available() -> bool:
    """Whether the biossl on the test's PATH has the ``audit`` verb."""
    exe = shutil.which("biossl", path=_env()["PATH"])
    if exe is None:
        return False
    return subprocess.run([exe, "audit", "--help"], env=_env(), capture_output=True, timeout=120).returncode == 0


def lint_titles(text: str) -> list[str]:
    """Titles of the lints in ``snakemake --lint`` text output (``    * <title>:`` lines)."""
    return [m.group(1).rstrip(":") for m in re.finditer(r"^\s{4}\* (.+)$", text, flags=re.MULTILINE)]


@pytest.fixture(scope="module")
def lint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_workdir(tmp_path_factory.mktemp("wf_lint"))


# (a) lint ------------------------------------------------------------------------------------------------


def test_lint_is_clean_with_a_software_environment(lint_dir: Path) -> None:
    """With a conda environment named in the config every rule has a software environment: no lint at all."""
    conda = overlay(lint_dir / "conda.yaml", {"conda_env": "biossl"})
    proc = snakemake("--configfile", DEMO_CONFIG, conda, "--lint", cwd=lint_dir)
    assert proc.returncode == 0, output_of(proc)
    assert "Congratulations, your workflow is in a good condition" in proc.stdout + proc.stderr, output_of(proc)


def test_lint_without_conda_env_only_asks_for_a_software_environment(lint_dir: Path) -> None:
    """The demo config runs the biossl on PATH (no conda_env): the only lint left is that advice, once per rule."""
    proc = snakemake("--configfile", DEMO_CONFIG, "--lint", cwd=lint_dir)
    text = proc.stdout + proc.stderr
    titles = lint_titles(text)
    assert titles, output_of(proc)  # the lint ran and reported the missing software environment
    assert set(titles) == {SOFTWARE_LINT}, output_of(proc)
    assert len(titles) == 6, output_of(proc)  # cohort, tile, pretrain, embed, finetune, audit


# (b) config schema -----------------------------------------------------------------------------------------


def _validate(config: dict[str, Any]) -> None:
    from snakemake.utils import validate

    validate(config, str(SCHEMA))


def _demo() -> dict[str, Any]:
    config = yaml.safe_load(DEMO_CONFIG.read_text())
    assert isinstance(config, dict)
    return config


def test_schema_accepts_the_demo_config_and_fills_defaults() -> None:
    config = _demo()
    _validate(config)
    assert config["skip_bad"] is False
    assert config["tile"]["threads"] == 1
    assert config["pretrain"]["resume"] is True
    minimal: dict[str, Any] = {"manifest": "m.csv", "pretrain": {"config": "c.yaml"}}
    _validate(minimal)
    assert minimal["tile"] == {"mpp": 0.5, "tile_size": 256, "min_tissue": 0.5, "threads": 1}
    assert minimal["audit"]["enabled"] is False
    assert minimal["finetune"]["tasks"] == ["subtype"]


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda c: c["pretrain"].__setitem__("max_steps", "25"), ["max_steps", "'25' is not of type 'integer'"]),
        (lambda c: c.pop("manifest"), ["'manifest' is a required property"]),
        (lambda c: c["finetune"].__setitem__("tasks", ["grade"]), ["tasks", "'grade' is not one of"]),
        (lambda c: c["audit"].__setitem__("fail_pipline", True), ["audit", "'fail_pipline' was unexpected"]),
        (lambda c: c["tile"].__setitem__("min_tissue", 1.5), ["min_tissue", "1.5 is greater than the maximum of 1"]),
    ],
    ids=["max_steps-string", "no-manifest", "unknown-task", "misspelt-key", "min_tissue-range"],
)
def test_schema_rejects_a_bad_config_naming_the_key(
    change: Callable[[dict[str, Any]], object], words: list[str]
) -> None:
    from snakemake.exceptions import WorkflowError

    config = _demo()
    change(config)
    with pytest.raises(WorkflowError) as err:
        _validate(config)
    message = str(err.value)
    for word in words:
        assert word in message, message


def test_workflow_stops_on_a_bad_config_before_any_job(lint_dir: Path) -> None:
    bad = overlay(lint_dir / "bad.yaml", {"pretrain": {"max_steps": "many"}})
    proc = snakemake("--configfile", DEMO_CONFIG, bad, "--cores", "1", "-n", cwd=lint_dir)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "Error validating config file" in text and "'many' is not of type 'integer'" in text, output_of(proc)
    assert "max_steps" in text, output_of(proc)
    assert not (lint_dir / "results").exists()


def test_slurm_profile_sets_pretraining_resources(lint_dir: Path) -> None:
    """The SLURM profile loads (every key a valid option) and gives pretraining a GPU, threads and a day."""
    proc = snakemake("--configfile", DEMO_CONFIG, "--profile", PROFILE, "--cores", "64", "-n", cwd=lint_dir)
    assert proc.returncode == 0, output_of(proc)
    text = proc.stdout + proc.stderr
    assert "Using profile" in text, output_of(proc)
    block = text[text.index("rule pretrain:"):]
    block = block[: block.index("Shell command:")]
    assert "threads: 8" in block and "gpu=1" in block and "runtime=1440" in block, block
    assert "export OMP_NUM_THREADS=8" in text


# (c) the demo cohort end to end -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bool, float]:
    """(working directory, audit ran, seconds) of the whole demo workflow with --cores 2."""
    root = demo_workdir(tmp_path_factory.mktemp("wf_demo"))
    with_audit = audit_available()
    extra = [] if with_audit else [overlay(root / "no_audit.yaml", {"audit": {"enabled": False}})]
    start = time.perf_counter()
    proc = snakemake("--configfile", DEMO_CONFIG, *extra, "--cores", "2", cwd=root)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, output_of(proc)
    print(f"demo workflow: {seconds:.0f} s on --cores 2 (audit {'on' if with_audit else 'off'})")
    return root, with_audit, seconds


def _key(res: Path, stem: str) -> str:
    """The key (``<stem>.<fingerprint>``) of the one tile file of slide ``stem`` in the workflow's results."""
    (h5,) = (res / "tile" / "tiles").glob(f"{stem}.*.h5")
    return h5.stem


def test_demo_workflow_writes_every_result_and_log(demo_run: tuple[Path, bool, float]) -> None:
    import anndata
    import h5py
    import pandas as pd

    root, with_audit, _ = demo_run
    res = root / "results"
    manifest = pd.read_csv(root / "biossl" / "demo_data" / "manifest.csv")
    stems = sorted({Path(p).stem for p in manifest.loc[manifest["modality"] == "wsi", "path"]})
    assert len(stems) == 8

    # validation
    assert json.loads((res / "cohort" / "report.json").read_text()) == []
    assert "24 patients" in (res / "cohort" / "summary.txt").read_text()
    # one coordinates file and thumbnail per slide (<stem>.<fingerprint>), where pretraining's work_dir looks
    keys = {stem: _key(res, stem) for stem in stems}
    for stem, key in keys.items():
        with h5py.File(res / "tile" / "tiles" / f"{key}.h5", "r") as f:
            assert f["coords"].shape[0] > 0 and f["coords"].shape[1] == 2
            assert f.attrs["tile_size"] == 256 and f.attrs["target_mpp"] == 0.5
            assert f.attrs["slide_name"] == f"{stem}.svs" and str(f.attrs["slide_fingerprint"]).startswith(key[-10:])
        assert (res / "tile" / "tiles" / f"{key}_thumbnail.png").stat().st_size > 0
    # pretraining reused the tiles instead of tiling again, and ran the configured 25 steps
    pretrain_log = (res / "logs" / "pretrain.log").read_text()
    assert pretrain_log.count("already tiled") == len(stems), pretrain_log[-3000:]
    assert (res / "pretrain" / "checkpoints" / "last.ckpt").stat().st_size > 0
    metrics = pd.read_csv(res / "pretrain" / "metrics.csv")
    assert metrics["step"].max() == 24
    # embeddings with labels in obs
    adata = anndata.read_h5ad(res / "embed" / "embeddings.h5ad")
    assert adata.n_obs == 24 and "X_fused" in adata.obsm and "subtype" in adata.obs and "site" in adata.obs
    # the two fine-tuning tasks, 3 folds, with the PCA baseline
    for task in ("subtype", "survival"):
        result = json.loads((res / "finetune" / f"{task}.json").read_text())
        assert result["task"] == task and result["n_patients"] == 24 and result["folds"]["n_folds"] == 3
    # audit (when biossl has the verb)
    if with_audit:
        audit = json.loads((res / "audit" / "audit.json").read_text())
        assert audit["columns"] == ["site"] and audit["label"] == "subtype"
        assert audit["verdict"] in ("pass", "fail")
        assert (res / "audit" / "report.html").read_text().lstrip().lower().startswith("<!doctype html")
    # a log per job
    logs = [res / "logs" / "cohort.log", res / "logs" / "pretrain.log", res / "logs" / "embed.log",
            *(res / "logs" / "tile" / f"{k}.log" for k in keys.values()),
            *(res / "logs" / "finetune" / f"{t}.log" for t in ("subtype", "survival")),
            *([res / "logs" / "audit.log"] if with_audit else [])]
    for log in logs:
        assert log.is_file(), log
    assert "24 patients x 64 dims" in (res / "logs" / "embed.log").read_text()
    assert f"{stems[0]}.svs" in (res / "logs" / "tile" / f"{keys[stems[0]]}.log").read_text()


def test_demo_workflow_second_run_does_nothing(demo_run: tuple[Path, bool, float]) -> None:
    root, with_audit, _ = demo_run
    extra = [] if with_audit else [root / "no_audit.yaml"]
    proc = snakemake("--configfile", DEMO_CONFIG, *extra, "--cores", "2", cwd=root)
    assert proc.returncode == 0, output_of(proc)
    assert "Nothing to be done" in proc.stdout + proc.stderr, output_of(proc)


def test_audit_rule_is_skipped_where_biossl_has_no_audit() -> None:
    if not audit_available():
        pytest.skip("`biossl audit --help` fails: this biossl has no audit verb yet; the demo ran with audit disabled")
    assert audit_available()


def test_audit_exit_codes_gate_the_workflow(demo_run: tuple[Path, bool, float], tmp_path: Path) -> None:
    """Exit code 1 (a failed probe) stops the workflow only with fail_pipeline; exit code 2 always does.

    A site signature of known strength is added to the real demo embeddings (X_fused shifted along one
    random direction per site), so the site probes fail; only the audit rule runs again.
    """
    import anndata
    import numpy as np

    root, with_audit, _ = demo_run
    if not with_audit:
        pytest.skip("`biossl audit --help` fails: this biossl has no audit verb yet")
    work = tmp_path / "wf"
    shutil.copytree(root, work, symlinks=True)
    emb = work / "results" / "embed" / "embeddings.h5ad"
    adata = anndata.read_h5ad(emb)
    rng = np.random.default_rng(0)
    x = np.asarray(adata.obsm["X_fused"], dtype=np.float64)
    directions = {site: rng.normal(size=x.shape[1]) * 10 for site in sorted(adata.obs["site"].unique())}
    adata.obsm["X_fused"] = x + np.stack([directions[s] for s in adata.obs["site"]])
    adata.write_h5ad(emb)
    probe = ["--keys", "X_fused", "--folds", "3", "--k", "2", "--permutations", "200", "--alpha", "0.2"]
    target = "results/audit/audit.json"
    log = work / "results" / "logs" / "audit.log"

    tolerant = overlay(work / "tolerant.yaml", {"audit": {"args": probe, "fail_pipeline": False}})
    proc = snakemake("--configfile", DEMO_CONFIG, tolerant, "--cores", "2", target, cwd=work)
    assert proc.returncode == 0, output_of(proc)
    assert "going on" in log.read_text() and "audit verdict: FAIL" in log.read_text(), log.read_text()
    assert (work / target).is_file()
    assert "rule embed" not in proc.stdout + proc.stderr  # only the audit ran again

    strict = overlay(work / "strict.yaml", {"audit": {"args": probe, "fail_pipeline": True}})
    proc = snakemake("--configfile", DEMO_CONFIG, strict, "--cores", "2", target, cwd=work)
    assert proc.returncode != 0, output_of(proc)
    assert "audit verdict: FAIL" in log.read_text()
    assert not (work / target).exists()  # snakemake removes the outputs of a failed job

    bad = overlay(work / "bad.yaml", {"audit": {"columns": ["no_such_column"], "fail_pipeline": False}})
    proc = snakemake("--configfile", DEMO_CONFIG, bad, "--cores", "2", target, cwd=work)
    assert proc.returncode != 0, output_of(proc)
    assert "no_such_column" in log.read_text(), log.read_text()
    assert "going on" not in log.read_text()


# (d) bad slides, a blank slide and an untidy manifest (skip_bad) --------------------------------------------


def test_skip_bad_plans_no_tile_job_for_a_rejected_slide_and_a_blank_slide_warns(tmp_path: Path) -> None:
    """``skip_bad: true`` on the demo with a truncated slide, a real-glass slide and an untidy manifest.

    The cohort check rejects the truncated slide: no tile job is planned for it. The glass slide (no tissue)
    gets a warning and an ``.h5`` listing no tiles, which pretraining reads. One row has spaces and an
    upper-case modality and the manifest a blank line: the workflow reads it with biossl's reader, so it
    plans the slides biossl uses. Up to pretraining (2 steps).
    """
    import h5py
    import pandas as pd

    root = demo_workdir(tmp_path / "wf")
    demo = root / "biossl" / "demo_data"
    slides = demo / "slides"
    data = (slides / "DEMO-04.svs").read_bytes()
    (slides / "DEMO-04.svs").write_bytes(data[: len(data) // 2])  # truncated: the cohort check rejects it
    (slides / "DEMO-03.svs").write_bytes((REPO / "tests" / "fixtures" / "wsi" / "glass.svs").read_bytes())
    lines = (demo / "manifest.csv").read_text().splitlines()
    untidy = [line.replace(",wsi,slides/DEMO-05.svs,", ", WSI , slides/DEMO-05.svs ,") for line in lines]
    untidy.insert(5, "")  # a blank line
    (demo / "manifest.csv").write_text("\n".join(untidy) + "\n")
    assert ", WSI , slides/DEMO-05.svs ," in (demo / "manifest.csv").read_text()
    config = overlay(root / "bad_slides.yaml", {"skip_bad": True, "pretrain": {"max_steps": 2}})

    proc = snakemake("--configfile", DEMO_CONFIG, config, "--cores", "2", "results/pretrain/checkpoints/last.ckpt",
                     cwd=root)
    assert proc.returncode == 0, output_of(proc)
    res = root / "results"
    rejected = json.loads((res / "cohort" / "report.json").read_text())
    assert [p["path"] for p in rejected if p["row"] is not None] == ["slides/DEMO-04.svs"]
    # no tile job for the rejected slide; one for every other, the untidy row's included
    assert not list((res / "logs" / "tile").glob("DEMO-04.*")) and not list((res / "tile" / "tiles").glob("DEMO-04.*"))
    tiled = sorted(p.stem.rsplit(".", 1)[0] for p in (res / "tile" / "tiles").glob("*.h5"))  # <stem>.<fingerprint>
    assert tiled == ["CMU-1-Small-Region", "DEMO-03", "DEMO-05", "DEMO-08", "DEMO-15", "DEMO-23", "DEMO-24"]
    # the blank slide: a warning in its log, an .h5 listing no tiles, and a thumbnail showing why
    blank = _key(res, "DEMO-03")
    assert "no tile has tissue" in (res / "logs" / "tile" / f"{blank}.log").read_text()
    with h5py.File(res / "tile" / "tiles" / f"{blank}.h5", "r") as f:
        assert f["coords"].shape == (0, 2)
    assert (res / "tile" / "tiles" / f"{blank}_thumbnail.png").stat().st_size > 0
    # pretraining reused every tile file (the blank one too) and trained without the rejected slide
    log = (res / "logs" / "pretrain.log").read_text()
    assert log.count("already tiled") == len(tiled), log[-3000:]
    assert "DEMO-04.svs" in log and "skipping" in log  # the data module skips the same row, with a warning
    assert pd.read_csv(res / "pretrain" / "metrics.csv")["step"].max() == 1
    assert (root / "results" / "pretrain" / "checkpoints" / "last.ckpt").stat().st_size > 0
