"""The report's statistics: by hand, against scipy, and recovering known parameters from generated data."""

import math

import numpy as np
import pytest
import scipy.optimize
import scipy.stats

from genrec.analysis import (PowerLawFit, bootstrap_power_law, compute_optimal, fit_cost, fit_log_linear,
                             fit_offset_power_law, mean_pairwise_overlap, pairs_for_clear_interval, rankdata,
                             relative_gain, retrains_for_gain, spearman, spearman_permutation_p,
                             spearman_with_interval, topk_overlap)


def law(n, p0, n0, a):
    return p0 - (np.asarray(n, float) / n0) ** (-a)


def test_exact_law_is_recovered():
    n = np.array([1e5, 3e5, 1e6, 3e6, 1e7])
    fit = fit_offset_power_law(n, law(n, 0.30, 2e3, 0.6))
    assert fit.p0 == pytest.approx(0.30, abs=1e-6) and fit.a == pytest.approx(0.6, rel=1e-4)
    assert fit.n0 == pytest.approx(2e3, rel=1e-3) and fit.rmse < 1e-8
    assert fit.headroom(1e7) == pytest.approx((1e7 / 2e3) ** -0.6, rel=1e-4)


def test_fit_matches_scipy_curve_fit_on_noisy_data():
    rng = np.random.default_rng(1)
    n = np.repeat([1e5, 2.5e5, 5e5, 1e6, 2e6, 8e6], 3)
    p = law(n, 0.25, 5e3, 0.5) + rng.normal(0, 0.002, n.size)
    ours = fit_offset_power_law(n, p)

    def model(logn, p0, log_n0, a):
        return p0 - np.exp(-a * (logn - log_n0))

    (p0, log_n0, a), _ = scipy.optimize.curve_fit(model, np.log(n), p, p0=[0.2, 8.0, 0.4], maxfev=20000)
    assert ours.p0 == pytest.approx(p0, abs=1e-4) and ours.a == pytest.approx(a, rel=1e-3)
    assert math.log(ours.n0) == pytest.approx(log_n0, abs=1e-2)
    scipy_rmse = math.sqrt(np.mean((p - model(np.log(n), p0, log_n0, a)) ** 2))
    assert ours.rmse <= scipy_rmse * (1 + 1e-6)  # the profile search is never worse than the local optimiser


def test_bootstrap_intervals_cover_the_generating_parameters():
    """Data drawn from the law with noise, four retrains per size, eight fixed draws: each 95% interval should
    hold the truth in most of them (a simulation of 40 draws here gave 80-90%: small groups undercover a little)."""
    n = np.repeat([1e5, 2.5e5, 5e5, 1e6, 2e6], 4)
    truth = dict(p0=0.12, n0=1e4, a=0.7)
    covered = {"p0": 0, "n0": 0, "a": 0}
    for draw in range(8):
        p = law(n, **truth) + np.random.default_rng(100 + draw).normal(0, 0.001, n.size)
        fit = fit_offset_power_law(n, p, p0_max=1.0)
        boot = bootstrap_power_law(n, p, fit, resamples=120, seed=draw, p0_max=1.0)
        assert boot["method"] == "within-size deviations" and boot["failed"] == 0
        assert boot["p0"].contains(fit.p0) and boot["p0"].high - boot["p0"].low < 0.02
        covered = {k: v + boot[k].contains(truth[k]) for k, v in covered.items()}
    assert min(covered.values()) >= 6, covered
    # One observation per size: residual bootstrap, still around the fit.
    p = law(n[::4], **truth) + np.random.default_rng(0).normal(0, 0.001, 5)
    single = bootstrap_power_law(n[::4], p, fit_offset_power_law(n[::4], p), resamples=100)
    assert single["method"] == "residuals" and single["p0"].low <= single["p0"].high


def test_degenerate_and_bounded_fits():
    n = np.array([1e5, 1e6, 1e7])
    assert fit_offset_power_law(n[:2], [0.1, 0.2]) is None  # 3 parameters need 3 sizes
    flat = fit_offset_power_law(n, [0.3, 0.2, 0.1])  # falling with size: no positive c, a flat fit
    assert flat.n0 == 0 and flat.p0 == pytest.approx(0.2) and np.allclose(flat.predict(n), 0.2)
    assert flat.flat and any(w.startswith("flat") for w in flat.warnings)
    # A log-linear trend with no sign of saturation would put P0 far above 1; the ceiling binds, and says so.
    capped = fit_offset_power_law(n, [0.3, 0.6, 0.9], p0_max=1.0)
    assert capped.p0 == pytest.approx(1.0) and capped.p0_capped and "P0 at its cap" in "; ".join(capped.warnings)
    # 3 points, 3 parameters: an exact fit has no residuals to resample, so no interval rather than a zero-width one.
    exact = fit_offset_power_law(n, law(n, 0.3, 1e3, 0.5))
    boot = bootstrap_power_law(n, law(n, 0.3, 1e3, 0.5), exact)
    assert boot["method"] == "none (exact fit)" and math.isnan(boot["p0"].low)


def test_log_linear_fit_by_hand():
    n = np.array([np.e, np.e ** 2, np.e ** 3])
    f = fit_log_linear(n, [1.0, 3.0, 5.0])
    assert f.slope == pytest.approx(2.0) and f.intercept == pytest.approx(-1.0) and f.rmse == pytest.approx(0.0)


def test_spearman_matches_scipy_with_ties():
    x = [1, 2, 2, 3, 5, 4, 7]
    y = [2, 1, 3, 3, 6, 5, 9]
    assert rankdata(x).tolist() == scipy.stats.rankdata(x).tolist()
    assert spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_spearman_permutation_p_against_scipy():
    x, y = [1, 2, 3, 4, 5, 6], [2, 1, 4, 3, 6, 5]
    ref = scipy.stats.permutation_test((y,), lambda b: scipy.stats.spearmanr(x, b).statistic,
                                       permutation_type="pairings", n_resamples=10_000).pvalue
    assert spearman_permutation_p(x, y) == pytest.approx(ref)  # both exact: 6! orderings
    assert spearman_permutation_p([1, 2, 3], [1, 2, 3]) == pytest.approx(2 / 6)  # 3 cells in order: p = 1/3
    rng = np.random.default_rng(0)
    x = rng.normal(size=20)
    assert spearman_permutation_p(x, x + rng.normal(size=20) * 0.1) < 0.01  # Monte Carlo for n > 8


def test_spearman_interval_against_scipy_bootstrap():
    rng = np.random.default_rng(3)
    x = rng.normal(size=30)
    y = x + rng.normal(size=30)
    ours = spearman_with_interval(x, y, resamples=2000, seed=1)
    ref = scipy.stats.bootstrap((x, y), lambda a, b: scipy.stats.spearmanr(a, b).statistic, paired=True,
                                vectorized=False, n_resamples=2000, method="percentile",
                                rng=np.random.default_rng(2)).confidence_interval
    assert ours["rho"] == pytest.approx(scipy.stats.spearmanr(x, y).statistic)
    assert ours["interval"].low == pytest.approx(ref.low, abs=0.06)
    assert ours["interval"].high == pytest.approx(ref.high, abs=0.06)


def test_topk_overlap_by_hand():
    a = {("u1", 1): [1, 2, 3, 4], ("u2", 1): [5, 6], ("u3", 1): [9]}
    b = {("u1", 1): [4, 3, 8, 9], ("u2", 1): [7, 8], ("u4", 1): [9]}
    # u1 shares 2 of 4, u2 none; u3 and u4 are not in both runs.
    assert topk_overlap(a, b, k=4) == pytest.approx((2 / 4 + 0) / 2)
    assert topk_overlap(a, b, k=2) == pytest.approx(0.0)  # top-2: [1, 2] vs [4, 3]
    assert mean_pairwise_overlap([a, a, b], k=4) == pytest.approx((1.0 + 0.25 + 0.25) / 3)
    assert math.isnan(topk_overlap(a, {}, 4))


def test_gains_costs_and_the_compute_optimal_pick():
    assert relative_gain(0.10, 0.15) == pytest.approx(0.5)
    assert relative_gain(4.0, 3.0, higher_is_better=False) == pytest.approx(0.25)
    n = np.array([1e5, 1e6, 1e7])
    cost = fit_cost(n, 3.0 * n)
    assert cost.slope == pytest.approx(1.0) and cost.size_for(3e6) == pytest.approx(1e6)
    fits = {32: PowerLawFit(0.2, 1e3, 0.5, 0, 3, 3), 64: PowerLawFit(0.3, 1e3, 0.5, 0, 3, 3)}
    costs = {32: fit_cost(n, 3.0 * n), 64: fit_cost(n, 6.0 * n)}  # twice the cost per parameter at length 64
    rows = compute_optimal(fits, costs, budget=3e6, n_range=(1e5, 1e7))
    # Length 32 affords 1e6 parameters (0.2 - 1e-1.5), length 64 only 5e5 (0.3 - 500^-0.5): 64 still wins here.
    assert [r["key"] for r in rows] == [64, 32]
    assert rows[0]["n"] == pytest.approx(5e5) and rows[0]["predicted"] == pytest.approx(0.3 - 500 ** -0.5)
    assert rows[1]["predicted"] == pytest.approx(0.2 - 1000 ** -0.5)
    # A budget below the smallest size: clipped to the data, flagged unaffordable.
    low = compute_optimal(fits, costs, budget=1e3, n_range=(1e5, 1e7))
    assert all(r["clipped"] and not r["affordable"] for r in low)


def test_the_sample_sizes_a_result_would_need_by_hand():
    # rho 0.5: atanh(0.5) = 0.549306, so n > 3 + 1.959964^2 * (1 + 0.125) / 0.549306^2 = 3 + 4.32159 / 0.301737 = 17.32.
    assert pairs_for_clear_interval(0.5) == 18
    # rho -0.42 (the committed synthetic report's): 3 + 3.841459 * 1.0882 / 0.447692^2 = 3 + 4.18028 / 0.200428 = 23.86.
    assert pairs_for_clear_interval(-0.42) == 24
    # At n = 18 the interval of rho 0.5 is clear of zero, at n = 17 it is not (the definition, checked directly).
    half = [abs(math.atanh(0.5)) - 1.959964 * math.sqrt(1.125 / (n - 3)) for n in (17, 18)]
    assert half[0] < 0 < half[1]
    assert pairs_for_clear_interval(0.0) is None and pairs_for_clear_interval(math.nan) is None
    assert pairs_for_clear_interval(1.0) == 4
    # A gain of 5% under a 10% two-standard-error margin from 3 retrains: the margin shrinks as 1/sqrt(m), so
    # 0.10 * sqrt(3 / m) < 0.05 needs m > 12: 13 retrains.
    assert retrains_for_gain(0.05, 0.10, 3) == 13
    assert retrains_for_gain(0.05, 0.04, 3) == 2  # already above the noise: fewer would do
    assert retrains_for_gain(-0.01, 0.10, 3) is None and retrains_for_gain(0.05, math.nan, 3) is None
