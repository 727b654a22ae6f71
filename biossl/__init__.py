"""biossl: self-supervised learning on multimodal biomedical cohorts.

The Python API (:mod:`biossl.api`) is re-exported here and imported on first use, so that
``import biossl`` stays light (no torch) until one of them is called::

    import biossl

    adata = biossl.embed("last.ckpt", "manifest.csv", labels="labels.csv")
    result = biossl.evaluate(adata, "labels.csv", task="subtype", label_column="subtype")
    audit = biossl.audit(adata, ["site"], label="subtype")
    wsi = biossl.patients_with(adata, "wsi")

``biossl.audit`` is also the package :mod:`biossl.audit` (probes, batch metrics, report); calling it
runs :func:`biossl.audit.api.audit`.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

#: The public Python API, from :mod:`biossl.api`.
_API = ("audit", "embed", "evaluate", "patients_with", "retrieval")

__all__ = ["__version__", "audit", "embed", "evaluate", "patients_with", "retrieval"]


def __getattr__(name: str) -> Any:
    """``biossl.embed`` ... on first use: import :mod:`biossl.api` (and with it the callable :mod:`biossl.audit`)."""
    if name not in _API:
        raise AttributeError(f"module 'biossl' has no attribute {name!r}")
    from biossl import api

    if name == "audit":  # importing biossl.api imported the package biossl.audit, callable as the function
        return globals()["audit"]
    return getattr(api, name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
