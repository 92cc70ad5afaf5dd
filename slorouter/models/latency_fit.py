"""The least-squares part of the latency model: pseudo-observations of the prior and a
non-negative fit of ``step ≈ c0 + c_batch·batch + c_kv·kv`` on (decayed) normal
equations. Tiny systems (3×3), solved by hand: no numpy on the decision path."""

from __future__ import annotations

from collections.abc import Iterable

from slorouter.models.static import EngineLimits, LinearStep

KV_SCALE = 1e-3  # the fit works on kv/1000 for conditioning


def prior_points(prior: LinearStep, limits: EngineLimits) -> list[tuple[float, float, float, float]]:
    """Pseudo-observations (weight, batch, kv, step) of the prior over a load grid."""
    pts: list[tuple[float, float, float, float]] = []
    top = max(1, limits.max_num_seqs)
    for b in sorted({1, 4, 16, 64, max(1, top // 2), top}):
        if b > top:
            continue
        for per in (256, 1024, 4096):
            kv = min(limits.kv_capacity_tokens, b * per)
            pts.append((1.0, float(b), float(kv), prior.at(b, kv)))
    return pts


def add_sums(s: list[float], pts: Iterable[tuple[float, float, float, float]]) -> None:
    for w, b, kv, y in pts:
        k = kv * KV_SCALE
        s[0] += w
        s[1] += w * b
        s[2] += w * k
        s[3] += w * b * b
        s[4] += w * b * k
        s[5] += w * k * k
        s[6] += w * y
        s[7] += w * b * y
        s[8] += w * k * y


def solve(a: list[list[float]], y: list[float]) -> list[float] | None:
    """Gaussian elimination with partial pivoting (tiny systems)."""
    n = len(y)
    m = [[*row, y[i]] for i, row in enumerate(a)]
    for c in range(n):
        p = max(range(c, n), key=lambda r: abs(m[r][c]))
        if abs(m[p][c]) < 1e-18:
            return None
        m[c], m[p] = m[p], m[c]
        for r in range(n):
            if r != c:
                f = m[r][c] / m[c][c]
                for k in range(c, n + 1):
                    m[r][k] -= f * m[c][k]
    return [m[i][n] / m[i][i] for i in range(n)]


def fit(total: list[float]) -> tuple[float, float, float] | None:
    """Non-negative least squares on 3 features by an active set (drop negatives, refit)."""
    full = [[total[0], total[1], total[2]], [total[1], total[3], total[4]], [total[2], total[4], total[5]]]
    rhs = [total[6], total[7], total[8]]
    active = [0, 1, 2]
    for _ in range(3):
        sol = solve([[full[i][j] for j in active] for i in active], [rhs[i] for i in active])
        if sol is None:
            return None
        coef = [0.0, 0.0, 0.0]
        for i, v in zip(active, sol, strict=True):
            coef[i] = v
        neg = [i for i in active if coef[i] < 0]
        if not neg:
            return coef[0], coef[1], coef[2]
        active = [i for i in active if i not in neg]
        if not active:
            return None
    return None
