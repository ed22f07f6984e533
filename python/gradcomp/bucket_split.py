"""Cutting a bucket's entries at element boundaries, for the collectives that give each rank a
part of a bucket: two_phase's chunks (one per rank of the group) and hierarchy's slices (one
per rank of a node).

A part of a parameter is an entry of its own, named ``name[start:stop]`` (elements of the
flattened parameter, or of the part it was cut from), so that its error-feedback residual has
its own slot; whole parameters keep their name. The base name is what checkpoints check
against the model. Parameters, not buckets, are cut, so the parts (and their residuals' names)
do not depend on how DDP lays out its buckets.
"""

from __future__ import annotations

from gradcomp import _C
from gradcomp.local_update import Entry

__all__ = ["MIN_PART", "base_name", "even_bounds", "split_entries"]


def even_bounds(numel: int, parts: int) -> list[int]:
    """``parts + 1`` boundaries cutting ``numel`` elements into ``parts`` runs whose lengths
    differ by at most one (the first ``numel % parts`` are one longer)."""
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    if numel < 0:
        raise ValueError(f"numel must be >= 0, got {numel}")
    step, extra = divmod(numel, parts)
    bounds = [0]
    for part in range(parts):
        bounds.append(bounds[-1] + step + (1 if part < extra else 0))
    return bounds


# A parameter is cut into parts only when each part keeps at least this many elements; a
# smaller one goes whole to one part, so that sparsifiers keep a meaningful k per part.
MIN_PART = 512


def split_entries(entries: list[Entry], parts: int) -> list[list[Entry]]:
    """The entries of each of ``parts`` parts. Every parameter is cut into ``parts`` runs of
    equal length (even_bounds), run p going to part p; one too small to leave MIN_PART
    elements per run goes whole to the part its name hashes to. The cut depends only on the
    parameter's name and size, not on the bucket it is in, so residual names survive DDP's
    bucket rebuilds and checkpoint resumes. Each part keeps bucket order."""
    out: list[list[Entry]] = [[] for _ in range(parts)]
    for name, offset, numel, compress, rows, method in entries:
        if parts == 1 or numel < parts * MIN_PART:
            out[_C.parameter_key(name) % parts].append(
                (name, offset, numel, compress, rows, method)
            )
            continue
        bounds = even_bounds(numel, parts)
        for part in range(parts):
            start, stop = bounds[part], bounds[part + 1]
            # A part of a matrix has no rows of its own (rows only matter to PowerSGD).
            out[part].append(
                (f"{name}[{start}:{stop}]", offset + start, stop - start, compress, 0, method)
            )
    return out


def base_name(label: str) -> str:
    """The parameter a (sub-)entry or residual belongs to: ``w[0:10]`` and
    ``w[0:10]/reduced`` -> ``w``."""
    return label.split("[", 1)[0].removesuffix("/reduced")
