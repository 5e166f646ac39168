"""The shared-memory arena: regions taken first-fit, given back and merged, shared across mappings."""

from __future__ import annotations

import os
import random

import numpy as np

from service.engine.arena import ALIGN, Arena


def test_regions_are_aligned_disjoint_and_the_arena_refuses_what_does_not_fit() -> None:
    arena = Arena(10 * ALIGN)
    a, b = arena.take(1), arena.take(ALIGN + 1)
    assert (a, b) == (0, ALIGN)  # first fit from the low end, each size rounded up to a cache line
    assert arena.take(8 * ALIGN) is None  # 7 lines left
    assert arena.take(7 * ALIGN) == 3 * ALIGN
    assert arena.free_bytes == 0
    arena.close()


def test_given_back_regions_merge_so_that_a_large_one_fits_again() -> None:
    arena = Arena(64 * ALIGN)
    rng = random.Random(0)
    taken: list[tuple[int, int]] = []
    for _ in range(500):
        if taken and rng.random() < 0.5:
            arena.give_back(*taken.pop(rng.randrange(len(taken))))
        else:
            size = rng.randrange(1, 6 * ALIGN)
            offset = arena.take(size)
            if offset is not None:
                ends = [(o, o + -(-s // ALIGN) * ALIGN) for o, s in taken]
                assert all(offset + size <= start or offset >= end for start, end in ends)  # never overlapping
                taken.append((offset, size))
    for region in taken:
        arena.give_back(*region)
    assert arena.free_bytes == 64 * ALIGN
    assert arena.take(64 * ALIGN) == 0  # one extent again
    arena.close()


def test_a_second_mapping_of_the_fd_sees_the_same_bytes() -> None:
    """What the engine process does with the memfd a front-end passed it."""
    owner = Arena(4096)
    other = Arena(4096, os.dup(owner.fd))
    owner.array(128, np.uint8, (4, 4))[...] = 7
    assert other.array(128, np.uint8, (16,)).tolist() == [7] * 16
    other.array(1024, np.float32, (2,))[...] = [1.5, -2.0]
    assert owner.array(1024, np.float32, (2,)).tolist() == [1.5, -2.0]
    owner.close()
    other.close()
