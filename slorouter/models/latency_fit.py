"""The least-squares part of the latency model: a Gaussian prior on the coefficients and a
non-negative fit of ``step ≈ c0 + c_batch·batch + c_kv·kv`` on (decayed) normal
equations. Tiny systems (3×3), solved by hand: no numpy on the decision path."""

from __future__ import annotations

from collections.abc import Iterable

from slorouter.models.static import LinearStep

KV_SCALE = 1e-3  # the fit works on kv/1000 for conditioning


_FLOOR = LinearStep()  # engine defaults: the scale of a coefficient the prior says is 0


def ridge(sums: list[float], prior: LinearStep, spread: float, noise: float) -> list[float]:
    """The data's normal equations plus a Gaussian prior on the coefficients: each one is
    the prior's within ``spread`` (relative, one sd; floored at a tenth of the engine
    default's coefficient, so a prior 0 can still be learned), against windows whose pace
    has a relative sd ``noise`` — the MAP estimate of the fit. A prior in coefficient
    space, not pseudo-observations on a load grid: points at loads the server never runs
    (256 sequences on a CPU engine) would pull the fit where the data is."""
    n = sums[0]
    ybar = sums[6] / n if n > 0 else prior.at(1, 0)
    var_n = (noise * max(ybar, 1e-6)) ** 2
    p = (prior.c0_s, prior.c_batch_s, prior.c_kv_s / KV_SCALE)
    floor = (_FLOOR.c0_s / 10, _FLOOR.c_batch_s / 10, _FLOOR.c_kv_s / KV_SCALE / 10)
    lam = [var_n / (spread * max(pj, fj)) ** 2 for pj, fj in zip(p, floor, strict=True)]
    out = list(sums)
    for j, d in enumerate((0, 3, 5)):  # the diagonal of XᵀX
        out[d] += lam[j]
        out[6 + j] += lam[j] * p[j]
    return out


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
