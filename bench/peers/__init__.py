"""The peers vit-serve is measured against, serving the same model with the same preprocessing."""
