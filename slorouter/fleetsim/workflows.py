"""Multi-call workflows in fleet-simulator scenarios (the shapes of the load generator's
``agents.yaml``).

A tier of class ``workflow`` may say how its workflows are shaped::

    - {name: agents, class: workflow, share: 0.25, deadline_ms: 20000,
       deadline_per_call: true,                   # D = deadline_ms × calls (default: D = deadline_ms)
       workflow: {shape: chain, calls: [3, 5]}}   # calls drawn uniformly from 3..5
    # workflow: {shape: fanout, width: 4, root: true, join: true}   # plan -> 4 parallel -> combine

One arrival of such a tier is one workflow: its calls without predecessors arrive
then, every other call when all of its predecessors have finished (as the load generator
sends them); a call whose predecessor did not finish is never sent. Every call draws
its own lengths. Without ``workflow:`` a request of a workflow tier is a workflow of one
call (as before).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from slojudge.shapes import CHAIN, FANOUT, Deps, chain_deps, fanout_deps


@dataclass(frozen=True, slots=True)
class WorkflowShape:
    shape: str  # chain | fanout
    calls: tuple[int, int] = (3, 3)  # chain: calls drawn uniformly from [lo, hi]
    width: int = 3  # fanout: parallel calls
    root: bool = True  # fanout: a call before them
    join: bool = True  # fanout: a call after all of them

    def draw(self, rng: random.Random) -> Deps:
        """For each call of one workflow (in send order), the indices of the calls it waits for."""
        if self.shape == CHAIN:
            lo, hi = self.calls
            n = lo if lo == hi else rng.randint(lo, hi)
            return chain_deps(n)
        return fanout_deps(self.width, self.root, self.join)

    def mean_calls(self) -> float:
        if self.shape == CHAIN:
            return (self.calls[0] + self.calls[1]) / 2
        return self.width + self.root + self.join


def parse_shape(raw: Any, path: str, errs: list[tuple[str, str]]) -> WorkflowShape | None:
    """A tier's ``workflow:`` mapping (errors appended as (path, message))."""
    if not isinstance(raw, dict):
        errs.append(
            (path, "must be a mapping: {shape: chain, calls: N | [lo, hi]} or {shape: fanout, width: N}")
        )
        return None
    known = {"shape", "calls", "width", "root", "join"}
    for k in raw:
        if k not in known:
            errs.append((f"{path}.{k}", "unknown key"))
    shape = raw.get("shape", CHAIN)
    if shape not in (CHAIN, FANOUT):
        errs.append((f"{path}.shape", f"must be chain or fanout, got {shape!r}"))
        return None
    if shape == CHAIN:
        c = raw.get("calls", 3)
        vals = c if isinstance(c, list) else [c]
        if (
            len(vals) not in (1, 2)
            or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in vals)
            or vals[0] > vals[-1]
        ):
            errs.append((f"{path}.calls", "must be an integer >= 1 or [lo, hi] with 1 <= lo <= hi"))
            return None
        for k in ("width", "root", "join"):
            if k in raw:
                errs.append((f"{path}.{k}", "only for shape fanout"))
        return WorkflowShape(CHAIN, (int(vals[0]), int(vals[-1])))
    w = raw.get("width", 3)
    if isinstance(w, bool) or not isinstance(w, int) or w < 1:
        errs.append((f"{path}.width", "must be an integer >= 1"))
        return None
    flags = {}
    for k in ("root", "join"):
        v = raw.get(k, True)
        if not isinstance(v, bool):
            errs.append((f"{path}.{k}", "must be true or false"))
            v = True
        flags[k] = v
    if "calls" in raw:
        errs.append((f"{path}.calls", "only for shape chain"))
    return WorkflowShape(FANOUT, width=w, root=flags["root"], join=flags["join"])
