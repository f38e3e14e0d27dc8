"""Cartoon Set attribute files (`csX.csv`) and the one-hot layout derived from them.

Each line of a `csX.csv` is `"name", index, count`: the attribute, the chosen variant and the
number of variants. The layout (attribute order, variant counts, one-hot offsets) is derived from
the data, never hard-coded, and recorded in the dataset manifest.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass
from itertools import accumulate


class AttributeFileError(ValueError):
    """A csX.csv that cannot be read as Cartoon Set attributes; the message is the reason."""


def parse_attribute_csv(text: str) -> list[tuple[str, int, int]]:
    """Parse the text of one csX.csv into [(name, index, count), ...] in file order."""
    rows = []
    reader = csv.reader(io.StringIO(text), skipinitialspace=True)
    for lineno, fields in enumerate(reader, 1):
        if not fields or all(not f.strip() for f in fields):
            continue
        if len(fields) != 3:
            raise AttributeFileError(f"line {lineno}: expected 3 fields (name, index, count), got {len(fields)}")
        name = fields[0].strip()
        if not name:
            raise AttributeFileError(f"line {lineno}: empty attribute name")
        try:
            index, count = int(fields[1]), int(fields[2])
        except ValueError:
            raise AttributeFileError(f"line {lineno}: index and count must be integers, got {fields[1:]!r}") from None
        if count < 1:
            raise AttributeFileError(f"line {lineno}: {name} has {count} variants")
        rows.append((name, index, count))
    if not rows:
        raise AttributeFileError("no attribute lines")
    names = [r[0] for r in rows]
    dup = [n for n, c in Counter(names).items() if c > 1]
    if dup:
        raise AttributeFileError(f"attribute listed twice: {dup[0]}")
    return rows


def format_attribute_csv(rows: list[tuple[str, int, int]]) -> str:
    """The exact Cartoon Set line format: `"hair", 25, 111`."""
    return "".join(f'"{name}", {index}, {count}\n' for name, index, count in rows)


@dataclass(frozen=True)
class AttributeSchema:
    names: tuple[str, ...]
    counts: tuple[int, ...]

    @property
    def offsets(self) -> tuple[int, ...]:
        return tuple(int(o) for o in accumulate(self.counts[:-1], initial=0))

    @property
    def width(self) -> int:
        return int(sum(self.counts))

    @classmethod
    def consensus(cls, parsed: list[list[tuple[str, int, int]]]) -> AttributeSchema:
        """The (names, counts) layout most files agree on; files that disagree get rejected."""
        if not parsed:
            raise ValueError("no attribute files to derive a schema from")
        layouts = Counter(tuple((n, c) for n, _, c in rows) for rows in parsed)
        layout, _ = layouts.most_common(1)[0]
        return cls(tuple(n for n, _ in layout), tuple(c for _, c in layout))

    def indices(self, rows: list[tuple[str, int, int]]) -> list[int]:
        """Validate one file against the schema; return its indices in schema order."""
        by_name = {n: (i, c) for n, i, c in rows}
        unknown = [n for n in by_name if n not in self.names]
        if unknown:
            raise AttributeFileError(f"unknown attribute {unknown[0]!r}")
        out = []
        for name, count in zip(self.names, self.counts):
            if name not in by_name:
                raise AttributeFileError(f"missing attribute {name!r}")
            index, file_count = by_name[name]
            if file_count != count:
                raise AttributeFileError(f"{name} has {file_count} variants here, {count} in the dataset")
            if not 0 <= index < count:
                raise AttributeFileError(f"{name} index {index} out of range 0..{count - 1}")
            out.append(index)
        return out

    def to_json(self) -> dict:
        return {
            "attributes": [
                {"name": n, "num_variants": c, "offset": o} for n, c, o in zip(self.names, self.counts, self.offsets)
            ],
            "one_hot_width": self.width,
        }

    @classmethod
    def from_json(cls, data: dict) -> AttributeSchema:
        attrs = data["attributes"]
        return cls(tuple(a["name"] for a in attrs), tuple(int(a["num_variants"]) for a in attrs))
