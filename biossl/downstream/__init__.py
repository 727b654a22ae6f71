"""Downstream evaluation of pretrained embeddings: metrics, clinical heads, tasks, cross-validation.

* :mod:`~biossl.downstream.embed` turns a pretraining checkpoint and a cohort into an AnnData of
  patient embeddings (``biossl embed``).
* :mod:`~biossl.downstream.metrics`: Harrell's c-index, macro one-vs-rest AUROC, balanced accuracy.
* :mod:`~biossl.downstream.heads`: a subtype head and two survival heads (Cox partial likelihood with
  Breslow ties; discrete-time NLL over time bins), each with its loss.
* :mod:`~biossl.downstream.tasks`: validated subtype and survival targets, and how they are scored.
* :mod:`~biossl.downstream.methods`: what is evaluated on a fold (a linear probe on frozen embeddings,
  PCA baselines); other modes implement the same :class:`~biossl.downstream.methods.Method` contract.
* :mod:`~biossl.downstream.cv`: patient-level k-fold cross-validation, mean ± sd over folds, JSON.
"""
