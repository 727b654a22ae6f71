"""Audits of embeddings: do they encode the biology, or the hospital, the scanner and the batch.

- :mod:`biossl.audit.probes`: nuisance probes (grouped linear and kNN probes, exact permutation p-values);
- :mod:`biossl.audit.batch`: batch-mixing metrics (silhouette, iLISI-style mixing, robustness index);
- :mod:`biossl.audit.run`: the whole audit of an AnnData of embeddings, as a JSON-safe dict;
- :mod:`biossl.audit.report`: the self-contained HTML report.
"""
