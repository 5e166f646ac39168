"""`vit-convert SRC DST`: any supported checkpoint -> this project's format (safetensors + vit.json)."""

from __future__ import annotations

import argparse
import sys

from model.checkpoints import load_checkpoint, save_native
from model.labels import LabelsError, resolve_labels
from model.weights import CheckpointError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vit-convert",
        description="Convert a Hugging Face directory (any served family), timm file or Google .npz into a "
        "vit-serve checkpoint.",
    )
    parser.add_argument("src", help="checkpoint to read: HF directory, timm .safetensors/.pth/.bin, or .npz")
    parser.add_argument("dst", help="directory to write (model.safetensors + vit.json)")
    parser.add_argument("--model", help="preset naming the architecture (required for timm and .npz files)")
    parser.add_argument("--labels", help="labels file (one a line, or a JSON list) to store with the weights")
    args = parser.parse_args(argv)
    try:
        ckpt = load_checkpoint(args.src, args.model)
        labels = resolve_labels(ckpt.config.num_classes, args.labels, ckpt.labels) if ckpt.config.num_classes else None
        save_native(args.dst, ckpt.model, labels, ckpt.preprocess)
    except (CheckpointError, LabelsError, ValueError) as exc:
        print(f"vit-convert: {exc}", file=sys.stderr)
        return 1
    cfg = ckpt.config
    print(
        f"wrote {args.dst}: {ckpt.format} {cfg.family} -> vit-serve, D={cfg.embed_dim} depth={cfg.depth} "
        f"patch={cfg.patch_size} image={cfg.image_size} classes={cfg.num_classes}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
