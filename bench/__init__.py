"""Benchmarks: the model alone, and vit-serve against its peers under the same load."""
