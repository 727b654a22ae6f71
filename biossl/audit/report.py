"""The audit report: one self-contained HTML file, and the verdict table as text.

:func:`render_html` turns the dict of :func:`biossl.audit.run.audit_embeddings` into a single HTML page
with no external asset (inline CSS; matplotlib figures embedded as base64 PNG data URIs), meant to be
read by a clinician as well as an engineer: a plain-language summary first, then the verdict table,
PCA scatters coloured by each audited column and by the label, probe bars with chance lines, the
batch-mixing table, the synthetic artifact curves (or "not run") and the provenance (command line, UTC
date, biossl version, checkpoint SHA-256). Every text that comes from the data (column names, class
names, file names) is escaped.

The summary and the text table say which embeddings and columns could not be tested, why, and what to
do (an ``incomplete`` verdict), and state the smallest excess over the permutation null each tested
column could have shown at this cohort size (a ``pass`` is *underpowered* where that exceeds
``max_excess``). A scatter coloured by a column of up to :data:`MAX_LEGEND` values has a legend; above
that, the :data:`MAX_LEGEND` - 1 most frequent values are coloured and named, the rest are grey, and a
note under the figure says so.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;color:#222;
line-height:1.45;padding:0 1em}
h1{font-size:1.7em;margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
.badge{display:inline-block;padding:.2em .7em;border-radius:.4em;font-weight:bold;color:#fff}
.fail{background:#c0392b}.pass{background:#27864a}.label{background:#2c6fad}.nt{background:#888}
.incomplete{background:#b9770e}.summary.incomplete{background:#fdf3e1;border-color:#b9770e;color:#222}
.summary{background:#f6f6f6;border-left:6px solid #888;padding:.6em 1em;margin:1em 0}
.summary.fail{background:#fbeaea;border-color:#c0392b;color:#222}.summary.pass{background:#eaf6ee;border-color:#27864a;
color:#222}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}th,td{border:1px solid #ccc;padding:.3em .6em;
text-align:left}th{background:#eee}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.row-fail td{background:#fbeaea}tr.row-nt td{color:#777}img{max-width:100%;border:1px solid #eee}
.note{color:#555;font-size:.9em}
code{background:#f2f2f2;padding:0 .2em}
"""

_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7",
            "#dbdb8d", "#9edae5"]


#: Most values of a column a scatter names in its legend (the palette's size).
MAX_LEGEND = len(_PALETTE)
_OTHER = "#c8c8c8"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{float(value):.{digits}f}"


def _p(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.3g}" if value >= 0.001 else f"{value:.1e}"


def _mpl(value: Any) -> str:
    """Text for matplotlib: ``$`` would start mathtext."""
    return str(value).replace("$", r"\$")


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(fig: Figure, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="{_png(fig)}">'


def _mde(value: Any) -> str:
    """A detectable excess: ``never`` when nothing can be significant."""
    return "never" if value is None else f"{float(value):.3f}"


def _pair(item: dict[str, Any]) -> str:
    return f"{item['column']} on {item['key']}"


def _power_lines(result: dict[str, Any]) -> list[str]:
    """One line per underpowered nuisance column (text)."""
    s = result["settings"]
    out = []
    for t in (result.get("power") or {}).get("underpowered", []):
        mde = t["min_detectable_excess"]
        size = "no excess at all" if mde is None else f"only an excess >= {mde:.2f}"
        out.append(f"power: {_pair(t)} ({t['n_groups']} patients, {t['n_classes']} classes) can detect {size} over "
                   f"the permutation null at alpha {s['alpha']}, above --max-excess {s['max_excess']}: a pass here "
                   "means little")
    return out


def _n_pairs(result: dict[str, Any]) -> int:
    """Embedding/column pairs the verdict rests on (the label too with ``fail_on_red_flag``)."""
    label = 1 if result.get("label") and result["settings"].get("fail_on_red_flag") else 0
    return len(result["keys"]) * (len(result["columns"]) + label)


def _verdict_line(result: dict[str, Any]) -> str:
    """The last line of the text table: the verdict and what it rests on."""
    s = result["settings"]
    verdict = result["verdict"]
    blocking = [n for n in result.get("not_tested", []) if n["affects_verdict"]]
    rule = (f"a probe fails when 2p < alpha = {s['alpha']} and balanced accuracy exceeds its permutation null's mean "
            f"by more than {s['max_excess']}")
    if verdict == "incomplete":
        pairs = _n_pairs(result)
        keys = result.get("suggested_keys")
        todo = (f"; for a verdict on the rest, run with --keys {','.join(keys)}" if keys else "")
        return (f"audit verdict: INCOMPLETE ({len(blocking)} of {pairs} embedding/column pair(s) not tested: "
                f"{', '.join(_pair(n) for n in blocking)}; no tested column fails{todo}; {rule})")
    under = (result.get("power") or {}).get("underpowered", [])
    if verdict == "pass" and under:
        return (f"audit verdict: PASS, UNDERPOWERED ({len(under)} tested column(s) could not show an excess of "
                f"{s['max_excess']}; {rule})")
    return f"audit verdict: {verdict.upper()} ({rule})"


def format_verdicts(result: dict[str, Any]) -> str:
    """The verdict table as aligned text (what ``biossl audit`` prints), then what was not tested, power, verdict."""
    head = ("embedding", "column", "role", "probe", "bal. acc.", "chance", "null mean", "excess", "detectable", "p",
            "verdict")
    rows = [head]
    for v in result["verdicts"]:
        tested = v["verdict"] != "not tested"
        rows.append((v["key"], v["column"], v["role"], v["probe"], _num(v["balanced_accuracy"]), _num(v["chance"]),
                     _num(v.get("null_mean")), _num(v.get("excess")),
                     _mde(v.get("min_detectable_excess")) if tested else "–", _p(v["p_value"]),
                     v["verdict"].upper() if v["verdict"] == "fail" else v["verdict"]))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("excess: balanced accuracy minus the permutation null's mean; detectable: the smallest excess that "
                 "could reach significance at this cohort size")
    for n in result.get("not_tested", []):
        lines.append(f"not tested: {_pair(n)}: {n['reason']}")
        lines.append(f"  what to do: {n['what_to_do']}")
    flags = [f"red flag: {f['column']!s} is easier to predict than {result['label']!s} on {f['key']!s} "
             f"(excess {f['excess']:.3f} vs {f['label_excess']:.3f})" for f in result.get("red_flags", [])]
    return "\n".join([*lines, *flags, *_power_lines(result), _verdict_line(result)])


def _best(entry: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The probe with the larger excess over its permutation null."""
    probe = max(("linear", "knn"), key=lambda p: entry[p]["excess"])
    return probe, entry[probe]


def _power_text(entry: dict[str, Any], max_excess: float) -> str:
    """The smallest detectable excess of a tested column, in words; whether a pass there is underpowered."""
    mde = entry.get("min_detectable_excess")
    size = (f"With {entry['n_groups']} patients in {len(entry['classes'])} classes, no excess over chance could have "
            "reached significance at all" if mde is None else
            f"With {entry['n_groups']} patients in {len(entry['classes'])} classes, the audit could only detect an "
            f"excess of at least {mde:.2f} over the permutation null")
    if entry.get("underpowered"):
        return (f" {size}, more than the tolerated margin of {max_excess:.2f}: <b>this test is underpowered</b>, "
                "and a pass here means little.")
    return f" {size} (within the tolerated margin of {max_excess:.2f})."


def _column_text(key: str, col: str, entry: dict[str, Any], s: dict[str, Any]) -> str:
    probe, best = _best(entry)
    numbers = (f"balanced accuracy {best['balanced_accuracy']:.2f} against {best['null_mean']:.2f} reached by chance "
               f"on this data (the permutation null's mean; 1 / values = {best['chance']:.2f}), {probe} probe, "
               f"p = {_p(best['p_value'])}, {entry['n_groups']} patients")
    if entry["verdict"] == "fail":
        return (f"The embeddings <code>{_e(key)}</code> predict <b>{_e(col)}</b> better than chance: "
                f"{numbers}. This means the representation carries a signature of the {_e(col)}, not only of "
                "the biology: a model trained on it can learn to recognise the "
                f"{_e(col)} instead of the disease, and its results may not hold in other hospitals or batches.")
    if entry["max_excess"] > s["max_excess"]:
        return (f"The embeddings <code>{_e(key)}</code> predict <b>{_e(col)}</b> above the tolerated margin "
                f"({numbers}), but this is not statistically significant with this many patients; it passes, with "
                "low certainty." + _power_text(entry, s["max_excess"]))
    return (f"The embeddings <code>{_e(key)}</code> do not predict <b>{_e(col)}</b> beyond the tolerated "
            f"margin of {s['max_excess']:.2f} above chance ({numbers})." + _power_text(entry, s["max_excess"]))


def _head(result: dict[str, Any]) -> str:
    verdict = result["verdict"]
    if verdict == "fail":
        return ("<p><b>Verdict: FAIL.</b> At least one audited column can be read from the embeddings more than the "
                "tolerated margin above chance, with statistical significance.</p>")
    if verdict == "incomplete":
        blocking = [n for n in result.get("not_tested", []) if n["affects_verdict"]]
        pairs = _n_pairs(result)
        keys = result.get("suggested_keys")
        todo = (f" For a verdict on what can be tested, audit <code>--keys {_e(','.join(keys))}</code>." if keys
                else "")
        return (f"<p><b>Verdict: INCOMPLETE.</b> {len(blocking)} of {pairs} embedding/column pair(s) could not be "
                "tested (listed below, with the reason and what to do); no tested column can be read from the "
                f"embeddings beyond the tolerated margin with statistical significance, but the audit cannot pass "
                f"what it did not test.{todo}</p>")
    under = (result.get("power") or {}).get("underpowered", [])
    warn = (f" <b>Underpowered:</b> on {len(under)} tested column(s) the audit could not have detected an excess of "
            f"{result['settings']['max_excess']:.2f} at this cohort size (see below), so this pass means little."
            if under else "")
    return ("<p><b>Verdict: PASS.</b> No audited column can be read from the embeddings more than the tolerated "
            f"margin above chance with statistical significance.{warn}</p>")


def _summary(result: dict[str, Any]) -> str:
    label = result.get("label")
    s = result["settings"]
    todo = {(n["key"], n["column"]): n["what_to_do"] for n in result.get("not_tested", [])}
    parts = []
    for key_entry in result["keys"]:
        key = key_entry["key"]
        for col in result["columns"]:
            entry = key_entry["columns"].get(col)
            if entry is None:
                continue
            if entry["verdict"] == "not tested":
                what = todo.get((key, col))
                parts.append(f'<li class="not-tested">On <code>{_e(key)}</code>, <b>{_e(col)}</b> could not be '
                             f"tested: {_e(entry['reason'])}." + (f" <i>What to do:</i> {_e(what)}." if what else "")
                             + "</li>")
                continue
            text = _column_text(key, col, entry, s)
            if entry.get("red_flag") and label:
                lab = key_entry["columns"][label]
                text += (f" <b>Red flag:</b> {_e(col)} is easier to predict than <b>{_e(label)}</b> (excess over "
                         f"the null {entry['max_excess']:.2f} vs {lab['max_excess']:.2f}).")
            parts.append(f"<li>{text}</li>")
        lab = key_entry["columns"].get(label) if label else None
        if lab and lab.get("verdict") == "label":
            probe, best = _best(lab)
            parts.append(f"<li>For comparison, the biology label <b>{_e(label)}</b> is predicted from "
                         f"<code>{_e(key)}</code> with balanced accuracy {best['balanced_accuracy']:.2f} against "
                         f"{best['null_mean']:.2f} by chance ({probe} probe, p = {_p(best['p_value'])}).</li>")
        elif lab and label:
            parts.append(f'<li class="not-tested">The biology label <b>{_e(label)}</b> could not be tested on '
                         f"<code>{_e(key)}</code>: {_e(lab['reason'])}.</li>")
    verdict = result["verdict"]
    return f'<div class="summary {verdict}">{_head(result)}<ul>{"".join(parts)}</ul></div>'


def _verdict_table(result: dict[str, Any]) -> str:
    rows = []
    for v in result["verdicts"]:
        cls = {"fail": "fail", "pass": "pass", "label": "label"}.get(v["verdict"], "nt")
        cells = (f'<td class="num">{_num(v["balanced_accuracy"])}</td><td class="num">{_num(v["chance"])}</td>'
                 f'<td class="num">{_num(v.get("null_mean"))}</td><td class="num">{_num(v.get("excess"))}</td>'
                 f'<td class="num">{_mde(v.get("min_detectable_excess"))}</td>'
                 f'<td class="num">{_p(v["p_value"])}</td>')
        if v["verdict"] == "not tested":
            cells = f'<td colspan="6" class="reason">{_e(v.get("reason", ""))}</td>'
        rows.append(
            f'<tr class="verdict-row row-{cls}" data-column="{_e(v["column"])}"><td>{_e(v["key"])}</td>'
            f'<td>{_e(v["column"])}</td><td>{_e(v["role"])}</td><td>{_e(v["probe"])}</td>{cells}'
            f'<td><span class="badge {cls}">{_e(v["verdict"])}</span></td></tr>')
    return ('<table id="verdicts"><tr><th>embedding</th><th>column</th><th>role</th><th>probe</th>'
            "<th>balanced accuracy</th><th>chance (1 / values)</th><th>null mean</th><th>excess over null</th>"
            "<th>smallest detectable excess</th><th>p (permutation)</th><th>verdict</th></tr>"
            + "".join(rows) + "</table>")


def legend_plan(values: Sequence[str]) -> tuple[list[str], list[tuple[str, str]], str | None]:
    """(colour of each point, legend entries ``(name, colour)``, note or None) of a scatter coloured by ``values``.

    Up to :data:`MAX_LEGEND` values: one colour and one legend entry each. Above: the ``MAX_LEGEND - 1`` most
    frequent values (ties by name) get a colour and an entry, the others share grey under "other (N values)",
    and the note says how many values the column has and that the legend names the most frequent. Missing
    values (``""``) are light grey, "no value" in the legend.
    """
    counts: dict[str, int] = {}
    for v in values:
        if v != "":
            counts[v] = counts.get(v, 0) + 1
    classes = sorted(counts)
    note = None
    if len(classes) <= MAX_LEGEND:
        named = classes
    else:
        named = sorted(sorted(classes, key=lambda c: (-counts[c], c))[:MAX_LEGEND - 1])
        note = (f"{len(classes)} values: too many for a legend of one colour each; the {len(named)} most frequent "
                f"are coloured and named, the other {len(classes) - len(named)} are grey")
    lookup = {c: _PALETTE[i % len(_PALETTE)] for i, c in enumerate(named)}
    colours = [lookup.get(v, _OTHER if v != "" else "#eeeeee") for v in values]
    entries = [(c, lookup[c]) for c in named]
    if len(named) < len(classes):
        entries.append((f"other ({len(classes) - len(named)} values)", _OTHER))
    if "" in values:
        entries.append(("no value", "#eeeeee"))
    return colours, entries, note


def _pca_figure(key_entry: dict[str, Any], names: Sequence[str]) -> tuple[Figure | None, list[str]]:
    """The PCA scatters of a key, one per column, and the notes of the columns with too many values for a legend."""
    pca = key_entry.get("pca")
    if not pca or not names:
        return None, []
    fig = Figure(figsize=(5.6 * len(names), 3.9))
    x, y = np.asarray(pca["pc1"], dtype=float), np.asarray(pca["pc2"], dtype=float)
    ev = pca.get("explained") or [0.0, 0.0]
    notes = []
    for i, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), i + 1)
        colours, entries, note = legend_plan(pca["values"][name])
        ax.scatter(x, y, c=colours, s=14 if len(x) < 2000 else 4, linewidths=0)
        ax.set_title(_mpl(f"{key_entry['key']} coloured by {name}"), fontsize=10)
        ax.set_xlabel(f"PC1 ({100 * ev[0]:.0f}% of variance)")
        ax.set_ylabel(f"PC2 ({100 * (ev[1] if len(ev) > 1 else 0):.0f}%)")
        for text, colour in entries:
            ax.scatter([], [], c=colour, s=14, label=_mpl(text))
        if entries:
            ax.legend(fontsize=6 if len(entries) > 10 else 7, loc="upper left", bbox_to_anchor=(1.0, 1.0),
                      frameon=False, ncol=2 if len(entries) > 12 else 1, handletextpad=0.2, columnspacing=0.6)
        if note:
            ax.text(0.01, 0.99, _mpl(f"{note.split(':')[0]}; legend: the most frequent"), transform=ax.transAxes,
                    va="top", fontsize=7)
            notes.append(f"{key_entry['key']} coloured by {name}: {note}.")
    fig.tight_layout()
    return fig, notes


def _bars_figure(key_entry: dict[str, Any], names: Sequence[str]) -> Figure | None:
    tested = [n for n in names if key_entry["columns"].get(n, {}).get("verdict") not in (None, "not tested")]
    if not tested:
        return None
    fig = Figure(figsize=(max(4.0, 1.7 * len(tested) + 1.5), 3.4))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.38
    for j, (probe, colour) in enumerate((("linear", "#2c6fad"), ("knn", "#e08a2c"))):
        vals = [key_entry["columns"][n][probe]["balanced_accuracy"] for n in tested]
        xs = np.arange(len(tested)) + (j - 0.5) * width
        ax.bar(xs, vals, width, color=colour, label=f"{probe} probe")
        nulls = [key_entry["columns"][n][probe].get("null_mean") for n in tested]
        ax.hlines([np.nan if v is None else v for v in nulls], xs - width / 2, xs + width / 2, colors="#444444",
                  linestyles=":", linewidth=2, label="permutation null mean" if j == 0 else "_")
    for i, n in enumerate(tested):
        chance = key_entry["columns"][n]["linear"]["chance"]
        ax.hlines(chance, i - 0.45, i + 0.45, colors="black", linestyles="--", label="1 / values" if i == 0 else "_")
    ax.set_xticks(np.arange(len(tested)))
    ax.set_xticklabels([_mpl(t) for t in tested], fontsize=9)
    ax.set_ylim(0, 1)
    ax.set_ylabel("balanced accuracy")
    ax.set_title(_mpl(f"Probes on {key_entry['key']}"), fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig


def _batch_table(result: dict[str, Any]) -> str:
    rows = []
    for key_entry in result["keys"]:
        for col, m in key_entry.get("batch", {}).items():
            r = m.get("robustness") or {}
            cells = [_num(m.get("silhouette")), _num(m.get("ilisi"), 2), _num(m.get("ilisi_random"), 2),
                     _num(m.get("ilisi_ratio"), 2), _num(r.get("kappa_label")), _num(r.get("kappa_batch")),
                     _num(r.get("robustness"))]
            rows.append(f"<tr><td>{_e(key_entry['key'])}</td><td>{_e(col)}</td>"
                        + "".join(f"<td class=num>{c}</td>" for c in cells) + "</tr>")
    if not rows:
        return "<p>No column could be measured.</p>"
    return ("<table><tr><th>embedding</th><th>column</th><th>silhouette by column</th><th>iLISI</th>"
            "<th>iLISI if mixed at random</th><th>iLISI ratio</th><th>label agreement (κ)</th>"
            "<th>column agreement (κ)</th><th>robustness index</th></tr>" + "".join(rows) + "</table>"
            '<p class="note">Silhouette near 0 (or below): the groups of the column overlap in the embedding; '
            "towards 1: each forms its own cluster. iLISI: the effective number of different values of the column "
            "among each patient's nearest neighbours (other patients); a ratio near 1 means as mixed as chance, "
            "lower means patients of one value cluster together. κ: how much more often than chance the nearest "
            "neighbours share the label / the column's value; robustness index = κ(label) − κ(column), positive "
            "when neighbourhoods follow the biology more than the column.</p>")


def _artifact_records(artifacts: Any) -> list[dict[str, Any]]:
    if isinstance(artifacts, dict):
        artifacts = artifacts.get("records", [])
    return [r for r in (artifacts or []) if isinstance(r, dict)]


def _artifacts(result: dict[str, Any]) -> str:
    records = _artifact_records(result.get("artifacts"))
    if not records:
        return "<p>Synthetic artifact probes: not run.</p>"
    out = []
    for modality in sorted({str(r.get("modality")) for r in records}):
        recs = [r for r in records if str(r.get("modality")) == modality]
        fig = Figure(figsize=(5.5, 3.4))
        ax = fig.add_subplot(1, 1, 1)
        for i, artifact in enumerate(sorted({str(r.get("artifact")) for r in recs})):
            pts = sorted((float(r["strength"]), float(r["drift"])) for r in recs if str(r.get("artifact")) == artifact
                         and r.get("strength") is not None and r.get("drift") is not None)
            if pts:
                ax.plot(*zip(*pts), marker="o", color=_PALETTE[i % len(_PALETTE)], label=_mpl(artifact))
        ax.set_xlabel("artifact strength")
        ax.set_ylabel("embedding drift")
        ax.set_title(_mpl(f"{modality}: drift by artifact strength"), fontsize=10)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        fig.tight_layout()
        rows = "".join(f"<tr><td>{_e(r.get('artifact'))}</td><td class=num>{_e(r.get('strength'))}</td>"
                       f"<td>{_e(r.get('parameter') or '')}</td>"
                       f"<td class=num>{_num(r.get('drift'))}</td><td class=num>{_num(r.get('detectability'))}</td>"
                       f"<td class=num>{_num(r.get('stability'))}</td></tr>" for r in recs)
        out.append(f"<h3>{_e(modality)}</h3>{_img(fig, f'drift curves {modality}')}<table><tr><th>artifact</th>"
                   f"<th>strength</th><th>setting</th><th>drift</th><th>detectability</th><th>stability</th></tr>{rows}</table>")
    return ('<p class="note">Drift: how far the embedding moves under the artifact, relative to the distances '
            "between patients. Detectability: how well a probe separates clean from corrupted embeddings. "
            "Stability: how often a downstream prediction stays the same.</p>" + "".join(out))


def _provenance(result: dict[str, Any]) -> str:
    prov = result["input"].get("provenance") or {}
    run = result.get("run") or {}
    ckpt = run.get("checkpoint") or {}
    items = {"command": run.get("command"), "date (UTC)": run.get("date_utc"),
             "biossl version (audit)": result.get("biossl_version"),
             "checkpoint": ckpt.get("path") or ckpt.get("name"),
             "checkpoint SHA-256": ckpt.get("sha256") or f"not known ({ckpt.get('origin', 'not recorded')})",
             "input": result["input"].get("source"),
             "rows": result["input"].get("n_rows"), "patients": result["input"].get("n_patients"),
             **{f"embedding {k}": prov.get(k) for k in ("checkpoint", "biossl_version", "data_fingerprint", "manifest",
                                                         "fusion", "seed") if prov.get(k) is not None},
             **{f"setting {k}": v for k, v in result["settings"].items()}}
    if not run:  # a result from before the run metadata
        items = {k: v for k, v in items.items() if k not in ("command", "date (UTC)", "checkpoint",
                                                             "checkpoint SHA-256")}
    rows = "".join(f'<tr data-field="{_e(k)}"><th>{_e(k)}</th><td>{_e(v)}</td></tr>' for k, v in items.items())
    notes = "".join(f"<li><code>{_e(e['key'])}</code>: {e['dropped_no_embedding']} row(s) without this embedding "
                    "left out</li>" for e in result["keys"] if e.get("dropped_no_embedding"))
    return f"<table>{rows}</table>" + (f"<ul class=note>{notes}</ul>" if notes else "")


def render_html(result: dict[str, Any]) -> str:
    """The self-contained report of an audit result."""
    label = result.get("label")
    names = [*result["columns"], *([label] if label else [])]
    figures = []
    for key_entry in result["keys"]:
        bars = _bars_figure(key_entry, names)
        pca, notes = _pca_figure(key_entry, names)
        block = f"<h3>{_e(key_entry['key'])} ({key_entry['n_rows']} rows, {key_entry['dim']} dimensions)</h3>"
        block += _img(bars, f"probe bars {key_entry['key']}") if bars else ""
        block += _img(pca, f"PCA {key_entry['key']}") if pca else ""
        block += "".join(f'<p class="note legend-note">{_e(n)}</p>' for n in notes)
        figures.append(block)
    verdict = result["verdict"]
    s = result["settings"]
    method = (f"Each column is predicted from the embeddings by a linear probe ({s['n_folds']}-fold, patients never "
              f"split across folds) and a k-nearest-neighbour probe (k = {s['k']}, neighbours from other patients "
              f"only). The p-value comes from {s['n_permutations']} permutations of the column across patients; "
              f"\"null mean\" is the probe's mean balanced accuracy over those permutations, the level it reaches on "
              f"this data by chance (below 1 / number of values for a kNN probe on few patients, which is why a kNN "
              f"score can sit far below 1 / number of values on a small cohort), and \"excess\" is the balanced "
              f"accuracy minus the null mean. A probe fails when p × 2 &lt; {s['alpha']} and its excess is more than "
              f"{s['max_excess']}. \"Smallest detectable excess\": the excess a balanced accuracy must exceed to "
              f"reach p × 2 &lt; {s['alpha']} with this many patients and these class sizes (the permutation "
              f"null's upper {s['alpha'] / 2:g} quantile minus its mean); where it is above {s['max_excess']}, the "
              "audit could miss an effect it is meant to catch, and a pass there is underpowered.")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>biossl audit: {_e(verdict)}</title><style>{_CSS}</style></head>
<body>
<h1>Embedding audit <span class="badge {_e(verdict)}">{_e(verdict.upper())}</span></h1>
<p class="note">Audited columns: {_e(", ".join(result["columns"]))}; biology label: {_e(label or "none")};
embeddings: {_e(", ".join(k["key"] for k in result["keys"]))}.</p>
<h2>Summary</h2>
{_summary(result)}
<h2>Verdicts</h2>
<p class="note">{method}</p>
{_verdict_table(result)}
<h2>Probes and PCA</h2>
{"".join(figures)}
<h2>Batch mixing</h2>
{_batch_table(result)}
<h2>Synthetic artifacts</h2>
{_artifacts(result)}
<h2>Provenance</h2>
{_provenance(result)}
</body></html>
"""


__all__ = ["MAX_LEGEND", "format_verdicts", "legend_plan", "render_html"]
