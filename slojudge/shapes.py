"""The call graph of a workflow: for each call, the calls it waits for.

A unit of the ``workflow`` class is several calls; its shape says which call may be sent
when. The load generator sends the calls in this order and the fleet simulator replays the
same order, and neither imports the other (``pyproject.toml``'s contracts), so the graph is
defined once, here, beside the judge that counts the workflow.

* ``chain``: call k waits for call k-1.
* ``fanout``: an optional root call, then ``width`` parallel calls (each waiting for the
  root, if any), then an optional join call that waits for all of them.

Calls are numbered in send order; a call's predecessors always have smaller numbers.
"""

from __future__ import annotations

CHAIN, FANOUT = "chain", "fanout"

Deps = tuple[tuple[int, ...], ...]


def chain_deps(calls: int) -> Deps:
    """``calls`` calls, each waiting for the one before it."""
    return tuple(((i - 1,) if i else ()) for i in range(calls))


def fanout_deps(width: int, root: bool = True, join: bool = True) -> Deps:
    """[root] -> ``width`` parallel calls -> [join]."""
    out: list[tuple[int, ...]] = []
    if root:
        out.append(())
    first = len(out)
    out.extend(((0,) if root else ()) for _ in range(width))
    if join:
        out.append(tuple(range(first, first + width)))
    return tuple(out)
