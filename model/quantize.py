"""int8 for the CPU (`VIT_QUANTIZE=int8`): the encoder blocks' Linear layers with int8 weights
(per output channel) and int8 activations (per token, scaled at run time), through torchao.

Only the blocks' matrix products (qkv, attention output, MLP) are quantized: they are nearly all
of a ViT's compute, while the patch embedding, the final norm, the pooling head, the projection
and the classifier stay in float32, so the outputs people compare (embeddings, probabilities) keep
their precision where it is cheapest to keep. torchao's int8 kernels are fast only compiled
(inductor turns them into VNNI int8 GEMMs; eager int8 is no faster than float32: docs/BENCHMARKS.md,
"CPU paths: compiled graphs and int8"), so the engine compiles a quantized model always. torchao
is imported only here, on use.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

from torch import nn

# torch.compile notes, once per graph, that Int8Tensor has no stable hash for its on-disk cache:
# the graphs are compiled at every start anyway (service/engine/device.py, warm-up).
warnings.filterwarnings("ignore", message="Int8Tensor does not implement _stable_hash_for_caching")
# What torchao's import says on a CPU host: the CUDA kernels it cannot load, a deprecated torch
# registration. Nothing the operator can act on.
_NOISY_ON_IMPORT = ("torchao", "torch.utils._pytree")


@contextlib.contextmanager
def _quiet_import() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _NOISY_ON_IMPORT]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def quantize_int8(model: nn.Module) -> nn.Module:
    """`model` with its blocks' Linear layers in dynamic int8, in place; returns it."""
    with _quiet_import():
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    quantize_(
        model,
        Int8DynamicActivationInt8WeightConfig(),
        filter_fn=lambda module, name: isinstance(module, nn.Linear) and name.startswith("blocks."),
    )
    return model
