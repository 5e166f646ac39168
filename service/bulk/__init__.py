"""`vit-serve embed`: a whole dataset embedded in this process, resumably (docs/BULK.md)."""
