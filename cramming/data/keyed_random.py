"""Counter-based randomness: every random number is a hash of where it is used.

A value is a pure function of (seed, stream, row key, draw number, column), so masks do
not depend on which process, worker thread or batch computes them, nor on their order:
N ranks reproduce one process, a background pipeline reproduces the main thread, and a
resumed run reproduces an uninterrupted one. The hash is SplitMix64's finaliser
(Steele et al., 2014), vectorised over numpy ``uint64`` (wrapping arithmetic).
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_MASK64 = (1 << 64) - 1

TRAIN_STREAM = 0  # the engine's own training rows; other streams are allocated by name


def _mix(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(30))
    x = x * _MIX1
    x = x ^ (x >> np.uint64(27))
    x = x * _MIX2
    return x ^ (x >> np.uint64(31))


def _u64(value: int) -> np.uint64:
    return np.uint64(int(value) & _MASK64)


def stream_id(name: str) -> int:
    """A stable, non-zero stream number for a named consumer of random draws."""
    return zlib.crc32(name.encode()) or 1


class KeyedRandom:
    """Random draws for a batch of rows, each row identified by an integer key.

    ``uniform((rows, cols))`` returns the next draw: row ``i`` of it depends only on
    (seed, stream, keys[i], how many draws came before, column), never on the other rows.
    Exposes the subset of ``torch.Generator``-style sampling the maskers need.
    """

    def __init__(self, seed: int, stream: int, keys: np.ndarray | torch.Tensor):
        keys = np.asarray(keys, dtype=np.int64).astype(np.uint64)
        with np.errstate(over="ignore"):
            base = _mix(np.array([_u64(seed)]) * _GOLDEN + _u64(stream))
            self._rows = _mix(keys * _GOLDEN ^ base)[:, None]
        self.draws = 0

    def _bits(self, shape: tuple[int, int]) -> np.ndarray:
        rows, cols = shape
        if rows != self._rows.shape[0]:
            raise ValueError(f"{rows} rows requested for {self._rows.shape[0]} keys")
        with np.errstate(over="ignore"):
            counter = (np.uint64(self.draws) << np.uint64(32)) + np.arange(cols, dtype=np.uint64)
            bits = _mix(self._rows ^ _mix(counter * _GOLDEN + _GOLDEN)[None, :])
        self.draws += 1
        return bits

    def uniform(self, shape: tuple[int, int]) -> torch.Tensor:
        """Floats in [0, 1) with 24 random bits, shape ``(rows, cols)``."""
        bits = self._bits(shape) >> np.uint64(40)
        return torch.from_numpy(bits.astype(np.float32) * np.float32(2.0**-24))

    def randint(self, high: int, shape: tuple[int, int]) -> torch.Tensor:
        """Integers in [0, high), shape ``(rows, cols)`` (53-bit uniform, floor)."""
        bits = self._bits(shape) >> np.uint64(11)
        values = np.floor(bits.astype(np.float64) * (2.0**-53) * high).astype(np.int64)
        return torch.from_numpy(np.minimum(values, high - 1))


class GeneratorRandom:
    """The same interface over a ``torch.Generator`` (tests, tools, fine-tuning)."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def uniform(self, shape: tuple[int, int]) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator, device=self.generator.device).cpu()

    def randint(self, high: int, shape: tuple[int, int]) -> torch.Tensor:
        return torch.randint(high, shape, generator=self.generator,
                             device=self.generator.device).cpu()


RandomSource = KeyedRandom | GeneratorRandom


def as_random(source: RandomSource | torch.Generator) -> RandomSource:
    """Wrap a plain ``torch.Generator``; keyed and wrapped sources pass through."""
    return GeneratorRandom(source) if isinstance(source, torch.Generator) else source
