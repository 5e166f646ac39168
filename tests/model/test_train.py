"""model/train.py: the held-out split, the input the service feeds, the augmentations, and the
command writing a checkpoint the service loads as `vit-mnist` is loaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from model.checkpoints import load_checkpoint
from model.preprocess import PreprocessConfig, decode_image
from model.tensors import normalize
from model.train import MEAN, MNIST_CONFIG, STD, augment, erase, load_digits, main, split_indices, to_input
from tests.images import encode


def builtin_preprocess() -> PreprocessConfig:
    """The preprocessing the built-in `vit-mnist` checkpoint ships with."""
    return load_checkpoint(Path(__file__).parents[2] / "model" / "builtin" / "vit-mnist").preprocess


def test_the_held_out_digits_are_never_trained_or_validated_on() -> None:
    train, held_out = split_indices(5000, validate=False)
    assert held_out.tolist() == list(range(4, 5000, 5))
    assert len(train) == 4000 and not set(train) & set(held_out)
    fit, validation = split_indices(5000, validate=True)
    assert (len(fit), len(validation)) == (3500, 500)
    assert set(fit) | set(validation) == set(train) and not set(fit) & set(validation)


def test_the_training_input_is_what_the_service_makes_of_a_grey_png() -> None:
    digits = load_digits()[0][:4]
    served = np.stack([decode_image(encode(Image.fromarray(d), "PNG"), 28, builtin_preprocess()) for d in digits])
    pixels = normalize(torch.from_numpy(served).permute(0, 3, 1, 2), MEAN, STD)
    assert torch.allclose(to_input(torch.from_numpy(digits)), pixels, atol=1e-6)


def test_augment_moves_the_digit_and_keeps_the_range() -> None:
    x = torch.from_numpy(load_digits()[0][:8]).float().div(255).unsqueeze(1)
    a = augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, augment(x, torch.Generator().manual_seed(1)))  # the generator decides
    assert (a - x).abs().amax(dim=(1, 2, 3)).min() > 0.1  # every digit moved


def test_erase_blanks_a_rectangle_with_its_probability() -> None:
    x = torch.ones(64, 1, 28, 28)
    assert torch.equal(erase(x, torch.Generator(), 0.0), x)
    erased = erase(x, torch.Generator().manual_seed(0), 1.0)
    blank = (erased == 0).sum(dim=(1, 2, 3)).float() / (28 * 28)
    assert (blank >= 0.01).all() and (blank <= 0.2).all()  # 2–15% of the image, rounded to pixels


def test_the_command_writes_a_checkpoint_the_service_loads(tmp_path: Path, capsys) -> None:
    main(["--epochs", "1", "--out", str(tmp_path / "ckpt")])
    assert "held-out (1,000 digits, i % 5 == 4) accuracy:" in capsys.readouterr().out
    ckpt = load_checkpoint(tmp_path / "ckpt")
    assert ckpt.config == MNIST_CONFIG and ckpt.labels == [str(d) for d in range(10)]
    assert ckpt.preprocess == builtin_preprocess()
