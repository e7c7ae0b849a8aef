"""Spark batch pipeline: ingest, cluster evaluation, GMM normalisation and tokenising.

Layers (see DESIGN.md):

- core: :mod:`pipelines.spark`, :mod:`pipelines.config`, :mod:`pipelines.delta`, :mod:`pipelines.runs`
- stages: :mod:`pipelines.ingest`, :mod:`pipelines.cluster`, :mod:`pipelines.gmm`, :mod:`pipelines.tokenize`
- kernels: pure numpy/Polars functions with no Spark import (``pipelines.*.kernels``)
"""

__version__ = "0.1.0"
