"""The latency-profile file: one format written by ``slorouter profile`` (from a sweep of
a live backend), loaded by the router's latency model as its prior, and by the
simulated engine (``slorouter sim --profile FILE``) to behave like that backend.

JSON shape (``format: slorouter-profile/1``)::

    {"format": "slorouter-profile/1",
     "name": "tiny-vllm-cpu", "engine": "vllm", "model": "tiny",
     "source": "measured" | "default",          # default = built-in guess, not measured
     "step": {"c0_s": .019, "c_batch_s": .002, "c_kv_s": 0.0, "c_prefill_s": 1e-4},
     "max_num_seqs": 256, "kv_capacity_tokens": 65536, "max_batched_tokens": 2048,
     "points": [{"concurrency": 1, "mean_itl_s": .021, "p50_itl_s": .021, "p90_itl_s": .023,
                 "mean_ttft_s": .13, "kv_tokens": 228}, ...]}

Step time model: ``c0 + c_batch·batch + c_kv·kv_tokens + c_prefill·prefill_tokens`` (seconds).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from slorouter.models.static import LinearStep

FORMAT = "slorouter-profile/1"


class ProfileError(ValueError):
    """A profile file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True, slots=True)
class ProfilePoint:
    concurrency: int
    mean_itl_s: float
    p50_itl_s: float | None = None
    p90_itl_s: float | None = None
    mean_ttft_s: float | None = None
    kv_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class StepProfile:
    name: str
    step: LinearStep
    engine: str = "vllm"
    model: str = ""
    source: str = "default"
    max_num_seqs: int = 256
    kv_capacity_tokens: int = 262_144
    max_batched_tokens: int = 2048
    points: tuple[ProfilePoint, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["points"] = [asdict(p) for p in self.points]
        return {"format": FORMAT, **d}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @staticmethod
    def from_json(data: Any, where: str = "<profile>") -> StepProfile:
        if not isinstance(data, dict):
            raise ProfileError(f"{where}: a profile is a JSON object")
        if data.get("format") != FORMAT:
            raise ProfileError(f"{where}: format: expected {FORMAT!r}, got {data.get('format')!r}")
        step = data.get("step")
        if not isinstance(step, dict):
            raise ProfileError(f"{where}: step: must be an object with c0_s, c_batch_s, c_kv_s, c_prefill_s")
        coef: dict[str, float] = {}
        for k in ("c0_s", "c_batch_s", "c_kv_s", "c_prefill_s"):
            v = step.get(k, 0.0)
            if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
                raise ProfileError(f"{where}: step.{k}: must be a number >= 0, got {v!r}")
            coef[k] = float(v)
        if coef["c0_s"] <= 0:
            raise ProfileError(f"{where}: step.c0_s: must be > 0")
        ints: dict[str, int] = {}
        for k, dflt in (("max_num_seqs", 256), ("kv_capacity_tokens", 262_144), ("max_batched_tokens", 2048)):
            v = data.get(k, dflt)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ProfileError(f"{where}: {k}: must be an integer > 0, got {v!r}")
            ints[k] = v
        points: list[ProfilePoint] = []
        for i, p in enumerate(data.get("points", []) or []):
            try:
                points.append(ProfilePoint(**p))
            except TypeError as e:
                raise ProfileError(f"{where}: points[{i}]: {e}") from None
        return StepProfile(
            name=str(data.get("name", "profile")),
            step=LinearStep(**coef),
            engine=str(data.get("engine", "vllm")),
            model=str(data.get("model", "")),
            source=str(data.get("source", "measured")),
            points=tuple(points),
            **ints,
        )

    @staticmethod
    def load(path: str | Path) -> StepProfile:
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError:
            raise ProfileError(f"{p}: no such file") from None
        except json.JSONDecodeError as e:
            raise ProfileError(f"{p}: not valid JSON ({e})") from None
        return StepProfile.from_json(data, str(p))
