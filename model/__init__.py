"""The ViT model package: architecture, checkpoints, preprocessing and labels (no HTTP here)."""
