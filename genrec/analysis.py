"""The statistics behind the report, as pure numpy functions (tested by hand and against scipy).

* **Offset scaling law** P(N) = P0 - (N / N0)^(-a): a task's metric P approaches a ceiling P0 as the backbone grows
  (N parameters); P0 - P(N) is the task's headroom at size N. Fitted by profile least squares: for a fixed exponent
  a the model is linear in (P0, c = N0^a), so a 1-d search over a finds the global least-squares optimum (no
  starting point to guess, unlike a generic curve fit), with c >= 0 and optionally P0 <= p0_max (MRR <= 1).
* **Bootstrap intervals** for P0, N0 and a: resampling the deviations of each size's retrains from their mean when
  every size has four or more, else the pooled residuals of the fit.
* A **log-linear** fit P = b ln N + c beside it, and both fits' RMSE.
* **Spearman's rank correlation** with a percentile bootstrap interval; **top-k overlap** between the lists two
  retrains serve the same request; **relative gains**; a **compute-optimal pick** under a budget.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

GOLDEN = (math.sqrt(5) - 1) / 2


@dataclass(frozen=True)
class PowerLawFit:
    """P(N) = p0 - (N / n0)^(-a); n0 = 0 (c = 0) is a flat fit: the data show no gain with size."""

    p0: float
    n0: float
    a: float
    rmse: float
    points: int
    sizes: int
    # Where the optimum sits on a constraint, the parameters say less than their values suggest: P0 at its cap (the
    # data look log-linear, no saturation in range), the exponent at a bound of its search, or no gain at all.
    p0_capped: bool = False
    a_at_bound: bool = False

    @property
    def flat(self) -> bool:
        return self.n0 <= 0

    @property
    def warnings(self) -> list[str]:
        out = []
        if self.flat:
            out.append("flat: no gain with size in these data (N0 and a meaningless)")
        if self.p0_capped:
            out.append("P0 at its cap: no saturation within the sizes measured")
        if self.a_at_bound and not self.flat:
            out.append("exponent at a bound of its search")
        if self.points <= 3:
            out.append("3 points for 3 parameters: an exact fit, no interval")
        return out

    def predict(self, n) -> np.ndarray:
        n = np.asarray(n, dtype=np.float64)
        if self.n0 <= 0:
            return np.full(n.shape, self.p0)
        return self.p0 - (n / self.n0) ** (-self.a)

    def headroom(self, n) -> np.ndarray:
        return self.p0 - self.predict(n)

    def to_dict(self) -> dict:
        return asdict(self)


def _solve(z: np.ndarray, p: np.ndarray, p0_max: float | None):
    """Least squares of p = p0 - c * z with c >= 0 and p0 <= p0_max, for each row of z (G, m) at once
    -> (p0, c, sse), each (G,)."""
    z = np.atleast_2d(z)
    zm = z.mean(axis=1)
    zc, pc = z - zm[:, None], p - p.mean()
    szz = np.einsum("gm,gm->g", zc, zc)
    c = np.where(szz > 0, -(zc @ pc) / np.where(szz > 0, szz, 1.0), 0.0)
    c = np.maximum(c, 0.0)
    p0 = p.mean() + c * zm
    if p0_max is not None:  # where the ceiling binds: fit c alone with p0 = p0_max
        zz = np.einsum("gm,gm->g", z, z)
        c_cap = np.maximum(np.where(zz > 0, (z @ (p0_max - p)) / np.where(zz > 0, zz, 1.0), 0.0), 0.0)
        capped = p0 > p0_max
        c = np.where(capped, c_cap, c)
        p0 = np.where(capped, p0_max, p0)
    r = p[None, :] - (p0[:, None] - c[:, None] * z)
    return p0, c, np.einsum("gm,gm->g", r, r)


def fit_offset_power_law(n, p, p0_max: float | None = None, a_bounds: tuple[float, float] = (0.01, 4.0),
                         grid: int = 200) -> PowerLawFit | None:
    """Least-squares fit of P(N) = P0 - (N/N0)^(-a); None when fewer than 3 distinct sizes (3 parameters)."""
    n = np.asarray(n, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    ok = np.isfinite(n) & np.isfinite(p) & (n > 0)
    n, p = n[ok], p[ok]
    if len(np.unique(n)) < 3:
        return None
    ref = float(np.exp(np.mean(np.log(n))))  # N scaled by its geometric mean keeps x^-a well conditioned
    log_x = np.log(n / ref)

    def sse(log_a) -> np.ndarray:
        return _solve(np.exp(-np.exp(np.atleast_1d(log_a))[:, None] * log_x[None, :]), p, p0_max)[2]

    grid_a = np.linspace(math.log(a_bounds[0]), math.log(a_bounds[1]), grid)
    errors = sse(grid_a)
    i = int(np.argmin(errors))
    # Golden-section refinement between the grid neighbours of the best grid point.
    left, right = grid_a[max(i - 1, 0)], grid_a[min(i + 1, grid - 1)]
    c1, c2 = right - GOLDEN * (right - left), left + GOLDEN * (right - left)
    f1, f2 = sse(c1)[0], sse(c2)[0]
    for _ in range(30):
        if f1 < f2:
            right, c2, f2 = c2, c1, f1
            c1 = right - GOLDEN * (right - left)
            f1 = sse(c1)[0]
        else:
            left, c1, f1 = c1, c2, f2
            c2 = left + GOLDEN * (right - left)
            f2 = sse(c2)[0]
    _, log_a = min([(errors[i], grid_a[i]), (f1, c1), (f2, c2)])
    a = math.exp(log_a)
    p0, c, err = (float(v[0]) for v in _solve(np.exp(-a * log_x)[None, :], p, p0_max))
    n0 = ref * c ** (1.0 / a) if c > 0 else 0.0
    near = lambda x, b: abs(math.log(x) - math.log(b)) < 0.02  # noqa: E731
    return PowerLawFit(p0=p0, n0=n0, a=a, rmse=math.sqrt(err / len(p)), points=len(p), sizes=len(np.unique(n)),
                       p0_capped=p0_max is not None and p0 >= p0_max - 1e-12,
                       a_at_bound=near(a, a_bounds[0]) or near(a, a_bounds[1]))


@dataclass(frozen=True)
class LogLinearFit:
    """P(N) = slope * ln N + intercept."""

    slope: float
    intercept: float
    rmse: float

    def predict(self, n) -> np.ndarray:
        return self.slope * np.log(np.asarray(n, dtype=np.float64)) + self.intercept


def fit_log_linear(n, p) -> LogLinearFit | None:
    n = np.asarray(n, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if len(np.unique(n)) < 2:
        return None
    slope, intercept = np.polyfit(np.log(n), p, 1)
    r = p - (slope * np.log(n) + intercept)
    return LogLinearFit(float(slope), float(intercept), float(math.sqrt(np.mean(r ** 2))))


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high


def percentile_interval(samples, level: float = 0.95) -> Interval:
    s = np.asarray([v for v in samples if np.isfinite(v)], dtype=np.float64)
    if s.size == 0:
        return Interval(math.nan, math.nan)
    q = (1 - level) / 2
    return Interval(float(np.quantile(s, q)), float(np.quantile(s, 1 - q)))


def bootstrap_power_law(n, p, fit: PowerLawFit, resamples: int = 1000, seed: int = 0,
                        p0_max: float | None = None, level: float = 0.95, min_per_size: int = 4) -> dict:
    """Percentile intervals for p0, n0 and a.

    Every size observed min_per_size times or more (retrains): each size's mean plus its own resampled deviations
    (the noise of each size as measured, and no assumption that the law fits the means). Otherwise: the fit's
    predictions plus resampled residuals (pooled over sizes)."""
    n = np.asarray(n, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if len(p) <= 3:  # 3 parameters through 3 points: zero residuals, nothing to resample
        none = Interval(math.nan, math.nan)
        return {"method": "none (exact fit)", "resamples": 0, "failed": 0, "p0": none, "n0": none, "a": none,
                "p0_samples": np.zeros(0)}
    rng = np.random.default_rng(seed)
    sizes, inverse = np.unique(n, return_inverse=True)
    groups = [np.flatnonzero(inverse == g) for g in range(len(sizes))]
    # Two or three retrains per size say little about each size's noise: pool the fit's residuals instead.
    stratified = all(len(g) >= min_per_size for g in groups)
    fitted = fit.predict(n)
    resid = p - fitted
    # Resampled deviations are inflated by sqrt(m / (m - d)) (m values, d fitted: the group mean, or the law's 3
    # parameters): plain resampling shrinks the spread by (m - d) / m and the intervals would undercover.
    if stratified:
        means = np.array([p[g].mean() for g in groups])
        devs = [(p[g] - p[g].mean()) * math.sqrt(len(g) / (len(g) - 1)) for g in groups]
    else:
        resid = resid * math.sqrt(len(p) / max(len(p) - 3, 1))
    draws = {"p0": [], "n0": [], "a": []}
    failed = 0
    for _ in range(resamples):
        if stratified:
            q = np.empty_like(p)
            for gi, g in enumerate(groups):
                q[g] = means[gi] + rng.choice(devs[gi], len(g))
            f = fit_offset_power_law(n, q, p0_max)
        else:
            f = fit_offset_power_law(n, fitted + rng.choice(resid, len(resid)), p0_max)
        if f is None:
            failed += 1
            continue
        draws["p0"].append(f.p0)
        if not f.flat:  # a flat draw has no N0 or exponent to speak of
            draws["n0"].append(f.n0)
            draws["a"].append(f.a)
    return {"method": "within-size deviations" if stratified else "residuals", "resamples": resamples,
            "failed": failed, **{k: percentile_interval(v, level) for k, v in draws.items()},
            "p0_samples": np.asarray(draws["p0"])}


def rankdata(x) -> np.ndarray:
    """Ranks 1..n, ties given their average rank (as scipy.stats.rankdata's default), vectorised."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    inverse = np.empty(len(x), dtype=np.int64)
    inverse[order] = np.arange(len(x))
    sx = x[order]
    first = np.r_[True, sx[1:] != sx[:-1]]
    dense = np.cumsum(first)[inverse]  # 1-based id of each value's tie group
    bounds = np.r_[np.flatnonzero(first), len(x)]  # where each tie group starts, and the end
    return 0.5 * (bounds[dense] + bounds[dense - 1] + 1)


def spearman(x, y) -> float:
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float(rx @ rx) * float(ry @ ry))
    return float(rx @ ry) / den if den > 0 else math.nan


def spearman_permutation_p(x, y, resamples: int = 5000, seed: int = 0) -> float:
    """Two-sided p-value of rho under independence: exact over all orderings for n <= 8, else Monte Carlo."""
    import itertools

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    rho = spearman(x, y)
    if not np.isfinite(rho):
        return math.nan
    if len(x) <= 8:
        perms = [spearman(x, y[list(p)]) for p in itertools.permutations(range(len(y)))]
    else:
        rng = np.random.default_rng(seed)
        perms = [spearman(x, rng.permutation(y)) for _ in range(resamples)]
    perms = np.asarray(perms)
    return float(np.mean(np.abs(perms) >= abs(rho) - 1e-12))


def spearman_with_interval(x, y, resamples: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """rho, a percentile bootstrap interval over resampled (x, y) pairs, and the permutation p-value. With few
    pairs the bootstrap interval is too optimistic (3 pairs in order give [1, 1]); read p and n beside it."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    rho = spearman(x, y)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        idx = rng.integers(0, len(x), len(x))
        draws.append(spearman(x[idx], y[idx]))
    return {"rho": rho, "interval": percentile_interval(draws, level), "n": int(len(x)),
            "p": spearman_permutation_p(x, y, seed=seed)}


Z_95 = 1.959963984540054  # the standard normal's 97.5% quantile: two-sided 95%


def pairs_for_clear_interval(rho: float, z: float = Z_95) -> int | None:
    """How many (x, y) pairs a Spearman correlation of this size needs before its 95% interval is clear of zero: the
    smallest n with |atanh(rho)| > z sqrt((1 + rho^2 / 2) / (n - 3)) (Fisher's z with Bonett and Wright's variance for
    Spearman's rho). None when rho is 0 or undefined: no number of pairs would do."""
    if not math.isfinite(rho) or rho == 0:
        return None
    if abs(rho) >= 1:
        return 4
    return math.floor(3 + z * z * (1 + rho * rho / 2) / math.atanh(abs(rho)) ** 2) + 1


def retrains_for_gain(gain: float, noise: float, retrains: int) -> int | None:
    """Retrains per size before a gain stands above the noise margin `noise` measured with `retrains` each (two
    standard errors, which shrink as 1/sqrt(retrains)): the smallest m with noise sqrt(retrains / m) < gain. None
    without a positive gain and margin."""
    if not (gain > 0 and noise > 0 and retrains >= 1):
        return None
    return math.floor(retrains * (noise / gain) ** 2) + 1


def topk_overlap(a: dict, b: dict, k: int = 10) -> float:
    """Mean share of the top-k titles two runs serve the same request (keys) in common; nan if none shared."""
    shares = []
    for key in a.keys() & b.keys():
        la, lb = list(a[key])[:k], list(b[key])[:k]
        width = max(len(la), len(lb))
        if width:
            shares.append(len(set(la) & set(lb)) / width)
    return float(np.mean(shares)) if shares else math.nan


def mean_pairwise_overlap(runs: list[dict], k: int = 10) -> float:
    vals = [topk_overlap(runs[i], runs[j], k) for i in range(len(runs)) for j in range(i + 1, len(runs))]
    vals = [v for v in vals if np.isfinite(v)]
    return float(np.mean(vals)) if vals else math.nan


def relative_gain(small: float, large: float, higher_is_better: bool = True) -> float:
    """(large - small) / |small| for a metric, (small - large) / |small| for a loss."""
    if not (np.isfinite(small) and np.isfinite(large)) or small == 0:
        return math.nan
    return ((large - small) if higher_is_better else (small - large)) / abs(small)


@dataclass(frozen=True)
class CostModel:
    """cost(N) = exp(intercept) * N^slope, fitted on measured retrains (log-log least squares)."""

    slope: float
    intercept: float

    def cost(self, n) -> np.ndarray:
        return np.exp(self.intercept) * np.asarray(n, dtype=np.float64) ** self.slope

    def size_for(self, budget: float) -> float:
        return float(math.exp((math.log(budget) - self.intercept) / self.slope)) if self.slope > 0 else math.inf


def fit_cost(n, cost) -> CostModel | None:
    n = np.asarray(n, dtype=np.float64)
    cost = np.asarray(cost, dtype=np.float64)
    ok = (n > 0) & (cost > 0) & np.isfinite(cost)
    if len(np.unique(n[ok])) < 2:
        return None
    slope, intercept = np.polyfit(np.log(n[ok]), np.log(cost[ok]), 1)
    return CostModel(float(slope), float(intercept))


def compute_optimal(fits: dict, costs: dict, budget: float, n_range: tuple[float, float]) -> list[dict]:
    """For each sequence length: the largest backbone whose retrain fits the budget (by its cost model), and the
    metric its scaling fit predicts there; sorted best first. Sizes outside n_range (the sizes measured) are
    clipped to it and flagged: the fits say nothing beyond the data."""
    rows = []
    for key, fit in fits.items():
        model = costs.get(key)
        if fit is None or model is None:
            continue
        n_star = model.size_for(budget)
        clipped = not (n_range[0] <= n_star <= n_range[1])
        n_use = float(min(max(n_star, n_range[0]), n_range[1]))
        affordable = float(model.cost(n_use)) <= budget * (1 + 1e-9)
        rows.append({"key": key, "n": n_use, "n_unclipped": n_star, "clipped": clipped, "affordable": affordable,
                     "cost": float(model.cost(n_use)), "predicted": float(fit.predict(n_use))})
    rows.sort(key=lambda r: (r["affordable"], r["predicted"]), reverse=True)
    return rows
