"""Known-answer benchmark of ``biossl audit``: power and false-positive rate on real expression profiles.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/audit_known_answer.py [--repeats 200] [--permutations 199]
        [--deltas 0,0.2,0.3,0.4,0.5,0.75] [--genes 50] [--embedding fixed,refit]

The protocol is :mod:`biossl.audit.known_answer` (one implementation, also used by
``tests/audit/test_known_answer.py``): scanpy's ``pbmc68k_reduced`` (700 real PBMC profiles x 765 genes;
no network) dealt into 140 pseudo-donors of 5 cells (the patients the audit groups by); in each repeat the
donors are dealt at random into 3 pseudo-sites (the null without a signature) and ``delta`` x the gene's
sd is added to a fresh random set of ``--genes`` genes in every cell of site 0.

Embeddings: ``fixed``, PCA(16) loadings fitted once on the signature-free profiles and applied to every
perturbed cohort (as a pretrained encoder would be); ``refit``, PCA(16) fitted on each perturbed cohort.

Each repeat runs :func:`biossl.audit.run.audit_embeddings` on the ``site`` column (alpha 0.05, max excess
0.10, seed = the repeat). "flagged" = the audit's verdict is fail; "p < alpha" = the Bonferroni p-value
alone. At ``delta = 0`` both are false-positive rates; 95% Clopper-Pearson intervals in brackets.
"""

from __future__ import annotations

import argparse

from biossl.audit.known_answer import N_DONORS, N_SITES, clopper_pearson, known_answer, load_pbmc, pca_basis


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--permutations", type=int, default=199)
    parser.add_argument("--deltas", default="0,0.2,0.3,0.4,0.5,0.75")
    parser.add_argument("--genes", type=int, default=50)
    parser.add_argument("--embedding", default="fixed,refit")
    args = parser.parse_args()
    x, donor = load_pbmc()
    basis = pca_basis(x)
    print(f"pbmc68k_reduced: {x.shape[0]} cells x {x.shape[1]} genes, {N_DONORS} pseudo-donors, {N_SITES} sites; "
          f"signature on {args.genes} genes of site 0; {args.repeats} repeats, B = {args.permutations}\n")
    print("| embedding | delta (sd) | flagged (fail) | p < alpha | linear bal. acc. | kNN bal. acc. | s / repeat |")
    print("|---|---|---|---|---|---|---|")
    for kind in args.embedding.split(","):
        for delta in (float(d) for d in args.deltas.split(",")):
            res = known_answer(x, donor, delta=delta, embedding=kind, repeats=args.repeats,
                               n_permutations=args.permutations, n_genes=args.genes, basis=basis)
            n = args.repeats
            f_lo, f_hi = clopper_pearson(res.flagged, n)
            s_lo, s_hi = clopper_pearson(res.significant, n)
            print(f"| {kind} | {delta:g} | {res.flagged_rate:.3f} [{f_lo:.3f}, {f_hi:.3f}] | "
                  f"{res.significant_rate:.3f} [{s_lo:.3f}, {s_hi:.3f}] | {res.mean('linear'):.3f} | "
                  f"{res.mean('knn'):.3f} | {res.seconds / n:.2f} |", flush=True)

if __name__ == "__main__":
    main()
