"""vit-serve: the HTTP service around the model package (FastAPI, micro-batching, metrics)."""
