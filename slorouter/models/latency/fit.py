"""The least-squares part of the latency model: a Gaussian prior on the coefficients and a
non-negative fit of ``step ≈ c0 + c_batch·batch + c_kv·kv`` on (decayed) normal
equations (:class:`PaceFit`, one per backend), and the ridge line of the TTFT excess
(:func:`line_fit`). Tiny systems (3×3, 2×2), solved by hand: no numpy on the decision
path."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from slorouter.models.saved import StateError, age, count, field, num, nums, section
from slorouter.models.static import LinearStep

KV_SCALE = 1e-3  # the fit works on kv/1000 for conditioning
STATE_VERSION = 1
DECODE = ("c0_s", "c_batch_s", "c_kv_s")  # the fitted coefficients, as saved

FitPoint = tuple[float, float, float, float]  # (weight in windows, running, kv_tokens, decode gap_s)


_FLOOR = LinearStep()  # engine defaults: the scale of a coefficient the prior says is 0


def ridge(
    sums: list[float], prior: LinearStep, spread: float, noise: float, guess: bool = False
) -> list[float]:
    """The data's normal equations plus a Gaussian prior on the coefficients: each one is
    the prior's within ``spread`` (relative, one sd; floored at a tenth of the engine
    default's coefficient, so a prior 0 can still be learned), against windows whose pace
    has a relative sd ``noise`` — the MAP estimate of the fit. A prior in coefficient
    space, not pseudo-observations on a load grid: points at loads the server never runs
    (256 sequences on a CPU engine) would pull the fit where the data is.

    ``guess`` (a prior that is the engine defaults, not a measured profile): a
    coefficient's sd is also at least what would explain the whole observed step on its
    own (``ȳ``, ``ȳ / batch̄``, ``ȳ / kv̄``) — a guess in absolute units is not scale-free: the
    defaults' 0.15 ms per sequence, within 10×, held a CPU vLLM's 4 ms per sequence at
    3.6 and pushed the difference into the fixed cost (+27 % at one stream)."""
    n = sums[0]
    ybar = sums[6] / n if n > 0 else prior.at(1, 0)
    var_n = (noise * max(ybar, 1e-6)) ** 2
    p = (prior.c0_s, prior.c_batch_s, prior.c_kv_s / KV_SCALE)
    floor = (_FLOOR.c0_s / 10, _FLOOR.c_batch_s / 10, _FLOOR.c_kv_s / KV_SCALE / 10)
    sd = [spread * max(pj, fj) for pj, fj in zip(p, floor, strict=True)]
    if guess and n > 0:
        scale = (ybar, ybar / max(sums[1] / n, 1.0), ybar / max(sums[2] / n, 1e-3))
        sd = [max(a, b) for a, b in zip(sd, scale, strict=True)]
    lam = [var_n / x**2 for x in sd]
    out = list(sums)
    for j, d in enumerate((0, 3, 5)):  # the diagonal of XᵀX
        out[d] += lam[j]
        out[6 + j] += lam[j] * p[j]
    return out


def add_sums(s: list[float], pts: Iterable[FitPoint]) -> None:
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


def line_fit(
    n: float, sx: float, sxx: float, sy: float, sxy: float, prior_weight: float
) -> tuple[float, float]:
    """Ridge fit of ``y ≈ a + b·x`` from (decayed) sums of ``n`` points: both coefficients
    pulled to 0 with the weight of ``prior_weight`` points; ``b ≥ 0`` (with a negative
    slope, the level alone). The 2×2 normal equations in closed form."""
    a11, a12, a22 = n + prior_weight, sx, sxx + prior_weight
    det = a11 * a22 - a12 * a12
    a = (sy * a22 - a12 * sxy) / det
    b = (a11 * sxy - a12 * sy) / det
    if b < 0.0:  # what load adds does not shrink with load: fit the level alone
        a, b = sy / a11, 0.0
    return a, b


class PaceFit:
    """One backend's decode-pace coefficients: decayed normal equations of the points
    ``gap ≈ c0 + c_batch·running + c_kv·kv`` (``sums``: the 6 upper entries of XᵀX, row
    by row, then the 3 of Xᵀy, with kv in thousands) and the last fit, with the prior's
    ``c_prefill_s`` (not identifiable from decode gaps)."""

    __slots__ = ("coef", "observations", "stamp", "sums")

    def __init__(self, prior: LinearStep, now: float) -> None:
        self.coef = prior
        self.sums = [0.0] * 9
        self.stamp = now
        self.observations = 0  # points added (not decayed)

    def add(self, pts: list[FitPoint], now: float, half_life_s: float) -> None:
        f = 0.5 ** ((now - self.stamp) / half_life_s)
        self.stamp = now
        self.sums = [v * f for v in self.sums]
        add_sums(self.sums, pts)
        self.observations += len(pts)

    def refit(self, prior: LinearStep, spread: float, noise: float, guess: bool = False) -> None:
        """The MAP coefficients now (kept as they were when the system is singular)."""
        sol = fit(ridge(self.sums, prior, spread, noise, guess))
        if sol is not None:
            self.coef = LinearStep(sol[0], sol[1], sol[2] * KV_SCALE, prior.c_prefill_s)

    def to_state(self, now: float) -> dict[str, Any]:
        c = self.coef
        return {
            "v": STATE_VERSION,
            "xtx_upper": self.sums[:6],
            "xty": self.sums[6:],
            "age_s": now - self.stamp,
            "observations": self.observations,
            "decode": {"c0_s": c.c0_s, "c_batch_s": c.c_batch_s, "c_kv_s": c.c_kv_s},
        }

    @classmethod
    def from_state(cls, raw: Any, now: float, where: str, prior: LinearStep) -> PaceFit:
        sec = section(raw, where, STATE_VERSION)
        out = cls(prior, age(sec, where, now))
        out.sums = nums(field(sec, "xtx_upper", where), f"{where}.xtx_upper", 6) + nums(
            field(sec, "xty", where), f"{where}.xty", 3
        )
        out.observations = count(field(sec, "observations", where), f"{where}.observations")
        dec = field(sec, "decode", where)
        if not isinstance(dec, Mapping):
            raise StateError(f"{where}.decode: must be an object")
        c0, cb, ckv = (num(field(dec, k, f"{where}.decode"), f"{where}.decode.{k}", 0.0) for k in DECODE)
        out.coef = LinearStep(c0, cb, ckv, prior.c_prefill_s)
        return out
