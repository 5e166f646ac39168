"""`Arena`: one front-end's shared memory, where its images' pixels go to the engine process and
their results come back, without pickling a byte of either.

A front-end (VIT_WORKERS > 1) owns one arena: a memfd, mapped by it and, once the fd has been
passed over the engine socket, by the engine process. For each request it takes one region, a
slice per image as large as the larger of the image's pixels and its results; the engine reads
the pixels in place and writes the results over them (staging has copied the pixels by then).
The region is given back when the engine's answer has been read, never earlier, so the engine
never writes into memory that has been handed to another request.

Regions are found first-fit in a sorted list of free extents, merged again on release: the
low end is reused first, so only as many pages as the busiest moment needed are ever touched.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import mmap
import os

import numpy as np

ALIGN = 64  # a cache line: no two images share one


def aligned(size: int) -> int:
    return -(-size // ALIGN) * ALIGN


class Arena:
    """`size` bytes of shared memory and the regions taken from them."""

    def __init__(self, size: int, fd: int | None = None) -> None:
        """A new memfd of `size` bytes, or (`fd`) the one another process made, mapped."""
        self.size = size
        self.fd = os.memfd_create("vit-serve-arena", os.MFD_CLOEXEC) if fd is None else fd
        if fd is None:
            os.ftruncate(self.fd, size)
        self.buffer = mmap.mmap(self.fd, size)
        self._bytes = np.frombuffer(self.buffer, np.uint8)  # sliced for views: cheaper than a frombuffer each
        self._starts: list[int] = [0]  # free extents, sorted by start
        self._ends: list[int] = [size]

    def take(self, size: int) -> int | None:
        """The offset of a free region of `size` bytes, or None if none is left."""
        size = aligned(size)
        for i, (start, end) in enumerate(zip(self._starts, self._ends, strict=True)):
            if end - start >= size:
                if end - start == size:
                    del self._starts[i], self._ends[i]
                else:
                    self._starts[i] = start + size
                return start
        return None

    def give_back(self, offset: int, size: int) -> None:
        """Return a region that `take` gave, merging it with free neighbours."""
        end = offset + aligned(size)
        i = bisect.bisect_left(self._starts, offset)
        if i < len(self._starts) and self._starts[i] == end:  # merge with the next extent
            end = self._ends[i]
            del self._starts[i], self._ends[i]
        if i > 0 and self._ends[i - 1] == offset:  # with the previous one
            self._ends[i - 1] = end
        else:
            self._starts.insert(i, offset)
            self._ends.insert(i, end)

    @property
    def free_bytes(self) -> int:
        return sum(end - start for start, end in zip(self._starts, self._ends, strict=True))

    def array(self, offset: int, dtype: np.dtype | type, shape: tuple[int, ...]) -> np.ndarray:
        """A view of the arena at `offset`: writes go straight to the shared memory."""
        dtype = np.dtype(dtype)
        return self._bytes[offset : offset + dtype.itemsize * math.prod(shape)].view(dtype).reshape(shape)

    def close(self) -> None:
        """Unmap and close (again: nothing); views still alive keep the mapping until they go."""
        if self.fd < 0:
            return
        del self._bytes
        with contextlib.suppress(BufferError):  # a view is alive: the mapping goes with it
            self.buffer.close()
        os.close(self.fd)
        self.fd = -1
