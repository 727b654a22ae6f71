"""The audit report: self-contained HTML from a real audit, escaped, rendered in headless Chromium.

The audit is of real profiles (scanpy's bundled ``pbmc68k_reduced``: 700 cells in 140 pseudo-donors, 3
pseudo-sites, a site signature on 50 genes of site 0) with the cell type as the biology label. Set
``BIOSSL_AUDIT_SCREENSHOT=/some/file.png`` to keep a copy of the screenshot.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from biossl.audit.report import MAX_LEGEND, format_verdicts, legend_plan, render_html
from biossl.audit.run import audit_embeddings, write_audit

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@pytest.fixture(scope="module")
def result() -> dict:
    import scanpy as sc

    pbmc = sc.datasets.pbmc68k_reduced()
    x = np.asarray(pbmc.X, dtype=np.float64)
    rng = np.random.default_rng(0)
    donor = rng.permutation(len(x)) % 140
    site = (rng.permutation(140) % 3)[donor]
    genes = rng.choice(x.shape[1], 50, replace=False)
    x[np.ix_(site == 0, genes)] += 0.5 * x[:, genes].std(0)
    xc = x - x.mean(0)
    vt = np.linalg.svd(xc, full_matrices=False)[2]
    obs = pd.DataFrame({"site": [f"hospital_{s}" for s in site], "donor": [f"D{d:03d}" for d in donor],
                        "subtype": pbmc.obs["bulk_labels"].astype(str).to_numpy()}, index=pbmc.obs_names)
    adata = ad.AnnData(X=np.zeros((len(x), 1), dtype=np.float32), obs=obs)
    adata.obsm["X_fused"] = xc @ vt[:16].T
    expr = xc @ vt[:32].T
    expr[:50] = np.nan  # 50 cells "lack" this modality
    adata.obsm["X_expression"] = expr
    adata.uns["biossl"] = {"checkpoint": "last.ckpt", "biossl_version": "0.1.0", "modalities": ["expression"]}
    res = audit_embeddings(adata, ["site"], label="subtype", group_column="donor", n_permutations=99, source="pbmc")
    res["artifacts"] = [{"modality": "expression", "artifact": "library_size", "strength": s, "drift": 0.1 * s,
                         "detectability": 0.5 + 0.1 * s, "stability": 1 - 0.05 * s} for s in (0, 1, 2, 3)]
    return res


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str, str]] = []
        self.rows: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        a = dict(attrs)
        for name in ("src", "href", "data", "poster", "srcset"):
            if a.get(name):
                self.links.append((tag, name, str(a[name])))
        if tag == "tr" and "verdict-row" in (a.get("class") or ""):
            self.rows.append(str(a.get("data-column")))


def test_the_report_is_self_contained_and_has_a_verdict_row_per_column(result: dict, tmp_path: Path) -> None:
    json_path, html_path = write_audit(result, tmp_path)
    assert json.loads(json_path.read_text())["verdict"] == result["verdict"] == "fail"
    parser = _Collector()
    parser.feed(html_path.read_text())
    assert parser.links and all(v.startswith("data:image/png;base64,") for _, _, v in parser.links)
    assert {"script", "link", "iframe"}.isdisjoint(parser.tags)
    # Two probes per column and embedding key: X_fused and X_expression.
    assert sorted(parser.rows) == sorted(["site"] * 4 + ["subtype"] * 4)
    text = html_path.read_text()
    assert "predict <b>site</b> better than chance" in text and "library_size" in text
    assert "50 row(s) without this embedding" in text
    assert not list(tmp_path.glob(".*.tmp"))


def test_text_from_the_data_is_escaped(tmp_path: Path) -> None:
    import scanpy as sc

    pbmc = sc.datasets.pbmc68k_reduced()[:200]
    evil_column, evil_class = "<script>alert(1)</script>", "<img src=x onerror=alert(2)> $1 & co"
    obs = pd.DataFrame({evil_column: np.where(np.arange(200) % 2 == 0, evil_class, "plain")}, index=pbmc.obs_names)
    adata = ad.AnnData(X=np.zeros((200, 1), dtype=np.float32), obs=obs)
    adata.obsm["X_fused"] = np.asarray(pbmc.obsm["X_pca"][:, :10], dtype=np.float64)
    res = audit_embeddings(adata, [evil_column], n_permutations=49)
    page = write_audit(res, tmp_path)[1].read_text()
    assert "<script>" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_artifacts_not_run_and_the_text_table(result: dict) -> None:
    without = {**result, "artifacts": None}
    assert "Synthetic artifact probes: not run." in render_html(without)
    table = format_verdicts(result)
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["embedding", "column", "role", "probe"]
    assert sum(" FAIL" in line for line in lines) >= 1 and lines[-1].startswith("audit verdict: FAIL")


def _many_sites(n_sites: int) -> dict:
    """An audit of real profiles (pbmc68k_reduced, 700 cells as patients) spread over ``n_sites`` sites."""
    import scanpy as sc

    pbmc = sc.datasets.pbmc68k_reduced()
    site = np.random.default_rng(5).permutation(len(pbmc)) % n_sites
    obs = pd.DataFrame({"site": [f"hospital_{s:02d}" for s in site]}, index=pbmc.obs_names)
    adata = ad.AnnData(X=np.zeros((len(pbmc), 1), dtype=np.float32), obs=obs)
    adata.obsm["X_fused"] = np.asarray(pbmc.obsm["X_pca"][:, :10], dtype=np.float64)
    return audit_embeddings(adata, ["site"], n_permutations=49, n_folds=2)


def _legend_texts(result: dict) -> list[str]:
    from biossl.audit.report import _pca_figure

    fig, _ = _pca_figure(result["keys"][0], ["site"])
    legend = fig.axes[0].get_legend()
    return [t.get_text() for t in legend.get_texts()]


def test_scatters_by_many_sites_have_a_legend_or_a_note(tmp_path: Path) -> None:
    # 16 sites (as the demo): one colour and one legend entry each (before: no legend above 12 values).
    sixteen = _many_sites(16)
    assert _legend_texts(sixteen) == [f"hospital_{i:02d}" for i in range(16)]
    assert "legend-note" not in render_html(sixteen)
    # 45 sites: the 19 most frequent named, the rest grey as "other", and a note under the figure.
    many = _many_sites(45)
    texts = _legend_texts(many)
    assert len(texts) == MAX_LEGEND and texts[-1] == f"other ({45 - MAX_LEGEND + 1} values)"
    page = write_audit(many, tmp_path)[1].read_text()
    assert ('<p class="note legend-note">X_fused coloured by site: 45 values: too many for a legend of one colour '
            f"each; the {MAX_LEGEND - 1} most frequent are coloured and named, the other {45 - MAX_LEGEND + 1} are "
            "grey.</p>") in page


def test_the_legend_plan_names_the_most_frequent_values() -> None:
    values = [f"s{i:02d}" for i in range(30) for _ in range(30 - i)] + [""] * 3  # s00 most frequent, s29 least
    colours, entries, note = legend_plan(values)
    names = [e[0] for e in entries]
    assert names[:-2] == [f"s{i:02d}" for i in range(MAX_LEGEND - 1)]
    assert names[-2:] == [f"other ({30 - MAX_LEGEND + 1} values)", "no value"]
    assert note is not None and note.startswith("30 values")
    assert len(set(colours[:len(values) - 3])) == MAX_LEGEND  # 19 colours and the grey of the others
    few = legend_plan(["b", "a", "b"])
    assert few[1] == [("a", "#1f77b4"), ("b", "#ff7f0e")] and few[2] is None


def test_chromium_renders_a_readable_screenshot(result: dict, tmp_path: Path) -> None:
    browser = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        pytest.skip("no chromium / chromium-browser / google-chrome on PATH: the screenshot test needs one "
                    "(`apt-get install chromium`; .ci/run installs it when it can)")
    _, html_path = write_audit(result, tmp_path / "audit")
    png = tmp_path / "report.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}", "--window-size=1280,2400",
           "--hide-scrollbars", html_path.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert png.is_file(), f"chromium wrote no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}"
    from PIL import Image

    with Image.open(png) as img:
        assert img.size == (1280, 2400)
        pixels = np.asarray(img.convert("L"), dtype=np.float64)
    assert png.stat().st_size > 50_000
    assert pixels.std() > 20  # not blank: text, tables and plots
    assert (pixels < 100).mean() > 0.01  # dark ink (text, points) on a light page
    keep = os.environ.get("BIOSSL_AUDIT_SCREENSHOT")
    if keep:
        Path(keep).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, keep)
