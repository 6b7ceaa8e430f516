"""How a state_dict's keys and shapes differ from a model's, said briefly: the one reporter behind
the checkpoint errors of the model (``lvdm.checkpoint``) and of the evaluation's CLIP tower
(``tools.evaluation``). Only keys and shapes are read, so meta and fake tensors work too."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol


class _Shaped(Protocol):
    @property
    def shape(self) -> tuple[int, ...]: ...


def key_groups(keys: Iterable[str], depth: int, limit: int | None = None) -> str:
    """``"first.second. (12), other. (3)"``: the keys counted by their first ``depth`` dotted parts,
    the largest group first. A group ends with "." when its keys go on past it (it is a prefix, as
    a ``--clip_prefix`` is written); past ``limit`` groups the rest are counted, not named."""
    counts: Counter[str] = Counter()
    for key in keys:
        parts = key.split(".")
        counts[".".join(parts[:depth]) + ("." if len(parts) > depth else "")] += 1
    groups = [f"{name} ({n})" for name, n in counts.most_common(limit)]
    more = len(counts) - len(groups)
    return ", ".join(groups) + (f", ... and {more} more" if more > 0 else "")


@dataclass(frozen=True)
class KeyMismatch:
    """What a state_dict (``found``) lacks, has in excess, or holds in another shape than the
    model's own state_dict (``expected``). False when they fit exactly."""

    missing: tuple[str, ...]  # sorted
    unexpected: tuple[str, ...]  # sorted
    wrong_shape: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]  # (key, found, expected)

    @classmethod
    def between(cls, expected: Mapping[str, _Shaped], found: Mapping[str, _Shaped]) -> KeyMismatch:
        return cls(
            missing=tuple(sorted(set(expected) - set(found))),
            unexpected=tuple(sorted(set(found) - set(expected))),
            # In the model's order: the first layers come first, as a reader scans the model.
            wrong_shape=tuple(
                (key, tuple(found[key].shape), tuple(value.shape))
                for key, value in expected.items()
                if key in found and tuple(found[key].shape) != tuple(value.shape)
            ),
        )

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.wrong_shape)

    def shape_lines(self, limit: int | None = None) -> list[str]:
        """``"key: checkpoint (a, b) vs model (c, d)"`` for the first ``limit`` wrong shapes."""
        return [f"{key}: checkpoint {found} vs model {want}" for key, found, want in self.wrong_shape[:limit]]

    def by_group(self, depth: int = 2) -> list[str]:
        """The missing and unexpected keys counted by group (a whole model: thousands of keys)."""
        lines = []
        if self.missing:
            lines.append(f"missing keys by group: {key_groups(self.missing, depth)}")
        if self.unexpected:
            lines.append(f"unexpected keys by group: {key_groups(self.unexpected, depth)}")
        return lines

    def examples(self, count: int = 3) -> list[str]:
        """One line per kind of difference: how many, and the first ``count`` of them."""
        lines = []
        for name, items in (
            ("missing", list(self.missing)),
            ("unexpected", list(self.unexpected)),
            ("wrong shape", self.shape_lines()),
        ):
            if items:
                lines.append(f"  {len(items)} {name}, e.g. " + "; ".join(items[:count]))
        return lines
