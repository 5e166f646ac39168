"""vit-serve: the HTTP service around the model package (FastAPI, micro-batching, metrics)."""

__version__ = "0.2.0"  # the one place; pyproject.toml reads it
