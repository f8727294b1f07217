"""A stand-in for the few `datasets` calls the training recipe makes, for a GPU machine without `datasets`.

The lent GPU machine has no network and no `datasets` (with pyarrow and pandas, ~68 MB of wheels: more
than a device call may carry). gpu_recipe_bench.py puts this folder on the recipe's PYTHONPATH only when
`import datasets` fails there. The recipe's own code still tokenizes every example (`tokenize_example`);
the rows are kept in a list in memory instead of arrow files on disk. Nothing else changes: with no
`datasets` distribution installed, transformers' Trainer treats the object as a plain map-style dataset.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

__version__ = "0.0.0+tunelog-gpu-shim"
SHIM = True


class Dataset:
    """Map-style rows: len(), [i], select(indices), from_generator(gen, **ignored)."""

    def __init__(self, rows: list[dict[str, Any]]):
        self._rows = rows

    @classmethod
    def from_generator(cls, generator: Callable[[], Iterator[dict[str, Any]]], **_kwargs: Any) -> Dataset:
        return cls(list(generator()))

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self._rows[i]

    def select(self, indices: Iterable[int]) -> Dataset:
        return Dataset([self._rows[i] for i in indices])

    @property
    def column_names(self) -> list[str]:
        return list(self._rows[0]) if self._rows else []


class IterableDataset:  # only for isinstance checks; the recipe never makes one
    pass
