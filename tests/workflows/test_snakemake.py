"""The Snakemake workflow (``workflows/``): lint, the config schema, the SLURM profile, and the demo cohort end to end.

``snakemake --lint`` and ``snakemake -n`` run with no options in ``workflows/`` (the default config is the
demo, its paths relative to the repository through ``base_dir``). The end-to-end run works in a temporary
directory (``snakemake --cores 2 --directory <tmp>``, about a minute on 2 cores); tests that change the
cohort copy it there and point ``base_dir`` at the copy.
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
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
RULES = ("cohort", "tile", "cache_features", "pretrain", "embed", "finetune", "audit")


def _env() -> dict[str, str]:
    """The test's environment with this interpreter's scripts (biossl, snakemake) first on PATH, one thread."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"
    return env


def snakemake(*args: str | Path, cwd: Path, timeout: int = 900,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run snakemake on the workflow in ``cwd`` (its working directory) and return the finished process."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(cwd), *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, env=env or _env(), capture_output=True, text=True, timeout=timeout)


def output_of(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit code {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}"


def demo_workdir(root: Path) -> Path:
    """A working directory holding a copy of what the demo config's relative paths name.

    The demo config reads the repository's files (``base_dir: ..``); overlay ``{"base_dir": str(root)}``
    to run on this copy instead.
    """
    (root / "biossl").mkdir(parents=True)
    shutil.copytree(REPO / "biossl" / "demo_data", root / "biossl" / "demo_data")
    (root / "configs" / "pretrain").mkdir(parents=True)
    shutil.copy2(REPO / "configs" / "pretrain" / "demo.yaml", root / "configs" / "pretrain" / "demo.yaml")
    return root


def bare(*args: str | Path, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """Run the venv's ``snakemake`` with only ``args`` (no -s, no --directory, no config) in ``cwd``."""
    return subprocess.run([str(SNAKEMAKE), *map(str, args)], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


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


# (a) lint and dry run with no options -----------------------------------------------------------------------


def test_lint_passes_in_workflows_with_no_options() -> None:
    """``snakemake --lint`` in ``workflows/``, nothing else: the default config, every rule with a conda env."""
    proc = bare("--lint", cwd=WORKFLOW)
    assert proc.returncode == 0, output_of(proc)
    text = proc.stdout + proc.stderr
    assert "Congratulations, your workflow is in a good condition" in text, output_of(proc)
    assert not lint_titles(text), output_of(proc)


def test_lint_is_clean_with_a_named_conda_env(lint_dir: Path) -> None:
    """conda_env (an existing environment) replaces envs/biossl.yaml: still no lint."""
    conda = overlay(lint_dir / "conda.yaml", {"conda_env": "biossl"})
    proc = snakemake("--configfile", DEMO_CONFIG, conda, "--lint", cwd=lint_dir)
    assert proc.returncode == 0, output_of(proc)
    assert "Congratulations, your workflow is in a good condition" in proc.stdout + proc.stderr, output_of(proc)


def test_every_rule_declares_a_conda_env_and_a_benchmark() -> None:
    text = SNAKEFILE.read_text()
    blocks = re.split(r"^(?:rule|checkpoint) ", text, flags=re.MULTILINE)[1:]
    names = [b.split(":", 1)[0] for b in blocks]
    assert set(RULES) | {"all"} == set(names), names
    for name, block in zip(names, blocks):
        if name != "all":
            assert "    conda:\n        CONDA_ENV\n" in block, name
            assert re.search(r"    benchmark:\n        \"results/benchmarks/", block), name
    env = yaml.safe_load((WORKFLOW / "envs" / "biossl.yaml").read_text())
    assert "torch==2.13.0" in env["dependencies"][-1]["pip"]
    assert (WORKFLOW / "envs" / "biossl.post-deploy.sh").read_text().count('"$repo"') == 1


def test_dry_run_in_workflows_with_no_options_plans_the_demo() -> None:
    proc = bare("-n", cwd=WORKFLOW)
    assert proc.returncode == 0, output_of(proc)
    text = proc.stdout + proc.stderr
    assert "checkpoint cohort:" in text, output_of(proc)
    for rule in ("pretrain", "embed", "finetune", "audit"):
        assert f"rule {rule}:" in text, output_of(proc)
    # the demo's paths, read from the repository wherever snakemake runs
    assert f"input: {REPO / 'biossl' / 'demo_data' / 'manifest.csv'}" in text, output_of(proc)
    assert not (WORKFLOW / "results").exists()


def test_dry_run_from_the_repository_root_with_no_config() -> None:
    proc = bare("-s", "workflows/Snakefile", "-n", cwd=REPO)
    assert proc.returncode == 0, output_of(proc)
    assert "input: biossl/demo_data/manifest.csv" in proc.stdout + proc.stderr, output_of(proc)


def test_a_configfile_replaces_the_demo_config(lint_dir: Path) -> None:
    """A user's --configfile is not merged over the demo: keys it leaves out get the schema's defaults."""
    minimal = overlay(lint_dir / "minimal.yaml", {"manifest": "biossl/demo_data/manifest.csv",
                                                  "pretrain": {"config": "configs/pretrain/demo.yaml"},
                                                  "finetune": {"tasks": []}})
    proc = snakemake("--configfile", minimal, "-n", "-p", cwd=lint_dir)
    assert proc.returncode == 0, output_of(proc)
    text = proc.stdout + proc.stderr
    assert "rule audit:" not in text and "rule finetune:" not in text, output_of(proc)  # audit.enabled: false
    assert "--labels" not in text and "--trainer.max_steps" not in text, output_of(proc)  # no demo labels, steps


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


@pytest.mark.parametrize(
    ("bad", "line"),
    [
        ({"pretrain": {"max_steps": "many"}}, "config pretrain.max_steps: 'many' is not of type 'integer'; fix it in"),
        ({"audit": {"fail_pipline": True}}, "config audit.fail_pipline: unknown key (misspelt? known here: enabled,"),
        ({"tile": {"min_tissue": 1.5}}, "config tile.min_tissue: 1.5 is greater than the maximum of 1; fix it in"),
    ],
    ids=["type", "misspelt-key", "range"],
)
def test_workflow_stops_on_a_bad_config_in_one_line(lint_dir: Path, bad: dict[str, Any], line: str) -> None:
    """One line naming the key, the problem, the file to fix and the schema; not the schema dumped."""
    config = overlay(lint_dir / "bad.yaml", bad)
    proc = snakemake("--configfile", DEMO_CONFIG, config, "--cores", "1", "-n", cwd=lint_dir)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    (found,) = [ln for ln in text.splitlines() if ln.startswith("config ")]
    assert found.startswith(line) and str(config) in found, output_of(proc)
    assert found.endswith("(every key, its type and default: workflows/schemas/config.schema.yaml)"), found
    assert len(text.splitlines()) <= 5 and "Failed validating" not in text and "$schema" not in text, output_of(proc)
    assert not (lint_dir / "results").exists()


def test_a_missing_required_key_is_named(lint_dir: Path) -> None:
    config = overlay(lint_dir / "no_manifest.yaml", {"pretrain": {"config": "c.yaml"}})
    proc = bare("--configfile", config, "-n", cwd=WORKFLOW)
    assert proc.returncode != 0
    assert f"config manifest: missing (a required key); fix it in {config}" in proc.stdout + proc.stderr, \
        output_of(proc)


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
    """(working directory, audit ran, seconds) of the whole demo workflow with --cores 2 (the repository's demo)."""
    root = tmp_path_factory.mktemp("wf_demo")
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
    manifest = pd.read_csv(REPO / "biossl" / "demo_data" / "manifest.csv")
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
    # the rule's output: last.ckpt of the finished run, under a name snakemake may delete before a rerun
    final = (res / "pretrain" / "checkpoints" / "last.ckpt").read_bytes()
    assert (res / "pretrain" / "model.ckpt").read_bytes() == final
    assert (res / "pretrain" / "run.stamp").read_text().strip() == "finished"
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
        assert audit["verdict"] in ("pass", "fail", "incomplete")  # 1 or 3 goes on (fail_pipeline: false)
        assert (res / "audit" / "report.html").read_text().lstrip().lower().startswith("<!doctype html")
    # a log per job
    logs = [res / "logs" / "cohort.log", res / "logs" / "pretrain.log", res / "logs" / "embed.log",
            *(res / "logs" / "tile" / f"{k}.log" for k in keys.values()),
            *(res / "logs" / "finetune" / f"{t}.log" for t in ("subtype", "survival")),
            *([res / "logs" / "audit.log"] if with_audit else [])]
    for log in logs:
        assert log.is_file(), log
    assert "24 patients x 64 dims" in (res / "logs" / "embed.log").read_text()
    # a benchmark per job: wall time and peak memory
    benchmarks = [res / "benchmarks" / "cohort.tsv", res / "benchmarks" / "pretrain.tsv",
                  res / "benchmarks" / "embed.tsv", *(res / "benchmarks" / "tile" / f"{k}.tsv" for k in keys.values()),
                  *(res / "benchmarks" / "finetune" / f"{t}.tsv" for t in ("subtype", "survival")),
                  *([res / "benchmarks" / "audit.tsv"] if with_audit else [])]
    for path in benchmarks:
        table = pd.read_csv(path, sep="\t")
        assert len(table) == 1 and {"s", "max_rss"} <= set(table.columns), path
        assert table["s"].iloc[0] > 0, path
    assert pd.read_csv(res / "benchmarks" / "pretrain.tsv", sep="\t")["max_rss"].iloc[0] > 100  # MB: torch loaded
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


def test_audit_incomplete_goes_on_unless_fail_pipeline(demo_run: tuple[Path, bool, float], tmp_path: Path) -> None:
    """Exit code 3 (INCOMPLETE: a key or column could not be tested) is tolerated like 1 without fail_pipeline.

    A ``biossl`` first on PATH answers ``audit`` as an INCOMPLETE audit does (its outputs, exit code 3) and
    hands every other verb to the real one.
    """
    root, _, _ = demo_run
    work = tmp_path / "wf"
    shutil.copytree(root, work, symlinks=True)
    real = shutil.which("biossl", path=_env()["PATH"])
    assert real is not None
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "biossl"
    stub.write_text(
        "#!/usr/bin/env bash\n"
        'if [ "$1" = audit ]; then\n'
        '  out=""; prev=""; for a in "$@"; do [ "$prev" = --out ] && out="$a"; prev="$a"; done\n'
        '  mkdir -p "$out"; echo \'{"verdict": "incomplete"}\' > "$out/audit.json"\n'
        '  echo "<!doctype html>" > "$out/report.html"; echo "audit verdict: INCOMPLETE"; exit 3\n'
        "fi\n"
        f'exec {real} "$@"\n'
    )
    stub.chmod(0o755)
    env = _env()
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    target = "results/audit/audit.json"
    log = work / "results" / "logs" / "audit.log"

    tolerant = overlay(work / "tolerant.yaml", {"audit": {"fail_pipeline": False}})
    proc = snakemake("--configfile", DEMO_CONFIG, tolerant, "--cores", "1", "-f", target, cwd=work, env=env)
    assert proc.returncode == 0, output_of(proc)
    assert "exit code 3" in log.read_text() and "going on" in log.read_text(), log.read_text()
    assert (work / target).is_file()

    strict = overlay(work / "strict.yaml", {"audit": {"fail_pipeline": True}})
    proc = snakemake("--configfile", DEMO_CONFIG, strict, "--cores", "1", "-f", target, cwd=work, env=env)
    assert proc.returncode != 0, output_of(proc)
    assert "INCOMPLETE" in log.read_text() and "going on" not in log.read_text()
    assert not (work / target).exists()


def test_pretraining_resumes_an_interrupted_run_with_ckpt_path_last(demo_run: tuple[Path, bool, float],
                                                                    tmp_path: Path) -> None:
    """A run of the same setup that stopped after its step-10 checkpoint resumes there (``--ckpt_path last``).

    The demo run's folder is made to look interrupted: ``last.ckpt`` is its step-10 checkpoint and
    ``run.stamp`` holds the setup's digest (a finished run writes ``finished`` there). Rerunning pretrain
    restores step 10 and trains to step 25: ``metrics.csv`` ends with one row per step.
    """
    import pandas as pd

    root, _, _ = demo_run
    work = tmp_path / "wf"
    shutil.copytree(root, work, symlinks=True)
    pre = work / "results" / "pretrain"
    target = "results/pretrain/model.ckpt"
    plan = snakemake("--configfile", DEMO_CONFIG, "-n", "-p", "-f", target, cwd=work)
    assert plan.returncode == 0, output_of(plan)
    (stamp,) = re.findall(r"echo '?([0-9a-f]{16})'? > results/pretrain/run\.stamp", plan.stdout + plan.stderr)
    shutil.copy2(pre / "checkpoints" / "step000010.ckpt", pre / "checkpoints" / "last.ckpt")
    (pre / "run.stamp").write_text(f"{stamp}\n")
    (pre / "model.ckpt").unlink()

    proc = snakemake("--configfile", DEMO_CONFIG, "--cores", "2", target, cwd=work)
    assert proc.returncode == 0, output_of(proc)
    log = (work / "results" / "logs" / "pretrain.log").read_text()
    assert "workflow: resuming the interrupted run (biossl pretrain --ckpt_path last)" in log, log[-3000:]
    assert "Restored all states from the checkpoint" in log, log[-3000:]
    assert list(pd.read_csv(pre / "metrics.csv")["step"]) == list(range(25))
    assert (pre / "run.stamp").read_text().strip() == "finished" and (pre / "model.ckpt").stat().st_size > 0


# (d) whole-slide cohorts: cached tile features -----------------------------------------------------------------


def test_dry_run_with_cache_features_plans_a_job_per_slide(demo_run: tuple[Path, bool, float], tmp_path: Path) -> None:
    """With cache_features on, each tiled slide gets a cache job; pretrain, embed and finetune read the features."""
    root, _, _ = demo_run
    work = tmp_path / "wf"
    shutil.copytree(root / "results", work / "results", symlinks=True)
    on = overlay(tmp_path / "cache.yaml", {"cache_features": {"enabled": True}})
    proc = snakemake("--configfile", DEMO_CONFIG, on, "-n", "-p", cwd=work)
    assert proc.returncode == 0, output_of(proc)
    text = proc.stdout + proc.stderr
    keys = sorted(p.stem for p in (work / "results" / "tile" / "tiles").glob("*.h5"))
    assert text.count("rule cache_features:") == len(keys) == 8, output_of(proc)
    for key in keys:
        assert f"output: results/features/{key}.h5" in text
        assert f"benchmark: results/benchmarks/cache_features/{key}.tsv" in text
    assert "biossl cache-features results/features/.coords/" in text and "--encoder image/vit_tiny" in text
    assert "--encoder-arg img_size=64" in text
    assert "--data.features_dir results/features" in text and "--features-dir results/features" in text


def test_cache_features_runs_end_to_end_on_a_small_slide_cohort(tmp_path: Path, features_config: str) -> None:
    """Two patients' demo slides: tile, cache-features (one file per slide), pretrain on the features, embed.

    7 jobs, about 23 s on 2 idle cores.
    """
    import anndata
    import h5py
    import pandas as pd

    cohort = tmp_path / "cohort"
    cohort.mkdir()
    slides = REPO / "biossl" / "demo_data" / "slides"
    pd.DataFrame({"patient_id": ["DEMO-03", "DEMO-05"], "modality": ["wsi", "wsi"],
                  "path": [str(slides / "DEMO-03.svs"), str(slides / "DEMO-05.svs")]}).to_csv(
        cohort / "manifest.csv", index=False)
    (cohort / "features.yaml").write_text(features_config)
    config = overlay(tmp_path / "config.yaml", {
        "manifest": "cohort/manifest.csv",
        "pretrain": {"config": "cohort/features.yaml", "max_steps": 2},
        "cache_features": {"enabled": True, "encoder": "image/vit_tiny",
                           "encoder_args": {"img_size": 32, "patch_size": 8}, "batch_size": 16},
        "finetune": {"tasks": []},
    })
    proc = snakemake("--configfile", config, "--cores", "2", cwd=tmp_path)
    assert proc.returncode == 0, output_of(proc)
    res = tmp_path / "results"
    keys = sorted(p.stem for p in (res / "tile" / "tiles").glob("*.h5"))
    assert [k.split(".")[0] for k in keys] == ["DEMO-03", "DEMO-05"]
    for key in keys:
        with h5py.File(res / "features" / f"{key}.h5", "r") as f, h5py.File(res / "tile" / "tiles" / f"{key}.h5") as c:
            assert f["features"].shape[0] == c["coords"].shape[0] > 0
        assert f"{key}: " in (res / "logs" / "cache_features" / f"{key}.log").read_text()
        assert (res / "benchmarks" / "cache_features" / f"{key}.tsv").is_file()
    assert not (res / "features" / ".coords").exists() or not any((res / "features" / ".coords").iterdir())
    adata = anndata.read_h5ad(res / "embed" / "embeddings.h5ad")
    assert adata.n_obs == 2 and "X_wsi" in adata.obsm


# (e) bad slides, a blank slide and an untidy manifest (skip_bad) --------------------------------------------


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
    config = overlay(root / "bad_slides.yaml", {"skip_bad": True, "pretrain": {"max_steps": 2}, "base_dir": str(root)})

    proc = snakemake("--configfile", DEMO_CONFIG, config, "--cores", "2", "results/pretrain/model.ckpt", cwd=root)
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
