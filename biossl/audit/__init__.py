"""Audits of embeddings: do they encode the biology, or the hospital, the scanner and the batch.

- :mod:`biossl.audit.probes`: nuisance probes (grouped linear and kNN probes, exact permutation p-values);
- :mod:`biossl.audit.batch`: batch-mixing metrics (silhouette, iLISI-style mixing, robustness index);
- :mod:`biossl.audit.run`: the whole audit of an AnnData of embeddings, as a JSON-safe dict;
- :mod:`biossl.audit.report`: the self-contained HTML report;
- :mod:`biossl.audit.api`: the whole audit as one call (what ``biossl audit`` runs).

The package itself can be called as :func:`biossl.audit.api.audit` (``biossl.audit`` is both).

Examples:
    >>> import biossl
    >>> result = biossl.audit("embeddings.h5ad", ["site"], label="subtype", out="audit/")  # doctest: +SKIP
    >>> result["verdict"]                                                                  # doctest: +SKIP
"""

import sys as _sys
import types as _types
from typing import Any as _Any


class _CallablePackage(_types.ModuleType):
    """The package, callable: ``biossl.audit(...)`` is :func:`biossl.audit.api.audit`."""

    def __call__(self, *args: _Any, **kwargs: _Any) -> _Any:
        from biossl.audit.api import audit

        return audit(*args, **kwargs)

    @property
    def __signature__(self) -> _Any:
        import inspect

        from biossl.audit.api import audit

        return inspect.signature(audit)


_sys.modules[__name__].__class__ = _CallablePackage
