"""Downstream evaluation of pretrained embeddings: metrics, clinical heads, tasks, cross-validation.

* :mod:`~biossl.downstream.embed` turns a pretraining checkpoint and a cohort into an AnnData of
  patient embeddings (``biossl embed``).
* :mod:`~biossl.downstream.metrics`: Harrell's c-index, macro one-vs-rest AUROC, balanced accuracy.
* :mod:`~biossl.downstream.heads`: a subtype head and two survival heads (Cox partial likelihood with
  Breslow ties; discrete-time NLL over time bins), each with its loss.
* :mod:`~biossl.downstream.tasks`: validated subtype and survival targets, and how they are scored.
* :mod:`~biossl.downstream.methods`: what is evaluated on a fold (a linear probe on frozen embeddings,
  optionally self-trained with pseudo-labels; PCA baselines), the :class:`~biossl.downstream.methods.Method`
  contract every mode implements.
* :mod:`~biossl.downstream.finetuning`: the encoders fine-tuned end to end, or the same architecture
  from scratch, with a task head (optionally with pseudo-labelled unlabelled patients).
* :mod:`~biossl.downstream.finetune_settings`: the fine-tuning settings (torch-free; the CLI's defaults).
* :mod:`~biossl.downstream.kmers`: DNA k-mer counts and the k-mer logistic-regression baseline.
* :mod:`~biossl.downstream.cv`: patient-level k-fold cross-validation, label fractions, mean ± sd over
  folds (and seeds), JSON.
* :mod:`~biossl.downstream.plots`: the label-efficiency plot.
"""
