"""Request traces: CSV files with ``arrived_at`` (s), ``num_prefill_tokens``, ``num_decode_tokens``
(the Azure LLM inference traces behind Splitwise, as processed in vidur).

Path resolution (first hit wins), so a workload works from a fresh clone and from
this workspace alike:

1. the path as written, relative to the workload file's folder (or absolute);
2. the same relative to the current directory;
3. by file name: ``<repo>/data/traces/``, ``<repo>/slorouter/data/``,
   ``<repo>/../shared/traces/`` (where ``<repo>`` holds the ``loadgen`` package).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from loadgen.errors import WorkloadError

COLUMNS = ("arrived_at", "num_prefill_tokens", "num_decode_tokens")


@dataclass(frozen=True, slots=True)
class Trace:
    path: str
    times: tuple[float, ...]  # seconds from the first arrival, sorted
    prompts: tuple[int, ...]
    outputs: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.times)

    @property
    def span(self) -> float:
        return self.times[-1] - self.times[0] if self.times else 0.0

    @property
    def native_rate(self) -> float:
        """Mean arrival rate of the trace (requests/s)."""
        return (len(self.times) - 1) / self.span if self.span > 0 else 0.0

    def window(self, start_s: float, duration_s: float | None) -> Trace:
        """Rows with ``start_s <= t < start_s + duration_s``, re-based to start at 0."""
        end = start_s + duration_s if duration_s is not None else float("inf")
        idx = [i for i, t in enumerate(self.times) if start_s <= t < end]
        if len(idx) < 2:
            raise ValueError(f"the window [{start_s}, {end}) s of {self.path} holds fewer than 2 requests")
        t0 = self.times[idx[0]]
        return Trace(
            self.path,
            tuple(self.times[i] - t0 for i in idx),
            tuple(self.prompts[i] for i in idx),
            tuple(self.outputs[i] for i in idx),
        )


def candidates(path: str, base_dir: Path) -> list[Path]:
    p = Path(path)
    if p.is_absolute():
        return [p]
    repo = Path(__file__).resolve().parent.parent
    name = p.name
    return [
        base_dir / p,
        Path.cwd() / p,
        repo / "data" / "traces" / name,
        repo / "slorouter" / "data" / name,
        repo.parent / "shared" / "traces" / name,
    ]


def resolve(path: str, base_dir: Path, file: str, where: str) -> Path:
    tried = candidates(path, base_dir)
    for cand in tried:
        if cand.is_file():
            return cand
    looked = ", ".join(str(c) for c in tried)
    raise WorkloadError(file, where, f"trace file {path!r} not found (looked in: {looked})")


@lru_cache(maxsize=8)
def load(path: Path) -> Trace:
    """Read and validate a trace CSV (cached per path)."""
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise WorkloadError(str(path), "", f"missing CSV column(s): {', '.join(missing)}")
            rows = []
            for lineno, row in enumerate(reader, start=2):
                try:
                    rows.append(
                        (
                            float(row["arrived_at"]),
                            int(float(row["num_prefill_tokens"])),
                            int(float(row["num_decode_tokens"])),
                        )
                    )
                except (TypeError, ValueError):
                    raise WorkloadError(str(path), f"line {lineno}", "not a number") from None
    except OSError as exc:
        raise WorkloadError(str(path), "", f"cannot read: {exc.strerror or exc}") from None
    if len(rows) < 2:
        raise WorkloadError(str(path), "", "a trace needs at least 2 rows")
    rows.sort(key=lambda r: r[0])
    t0 = rows[0][0]
    return Trace(
        str(path),
        tuple(r[0] - t0 for r in rows),
        tuple(max(1, r[1]) for r in rows),
        tuple(max(1, r[2]) for r in rows),
    )
