"""benchmarks/overhead_pooled.py: the interval over stored rounds, by hand, and the pooling of stored results."""

import json

import pytest

from benchmarks.overhead_pooled import mean_interval, pool_group, round_parts, table, units_needed, verdict


def test_the_interval_is_students_t_over_the_rounds():
    # mean 0.9, sample sd 0.1, three rounds: t(2, 0.975) = 4.3027, half width 4.3027 * 0.1 / sqrt(3) = 0.24842
    mean, low, high = mean_interval([0.8, 0.9, 1.0])
    assert mean == pytest.approx(0.9)
    assert (low, high) == pytest.approx((0.9 - 0.24842, 0.9 + 0.24842), abs=1e-4)


def test_units_needed_for_the_interval_to_clear_the_bar_by_hand():
    # mean 1.0, sample sd 0.1, 0.1 above the bar; at an even chance (power 0.5, t = 0): t(5, 0.975) 0.1 / sqrt(6) =
    # 2.5706 * 0.04082 = 0.1049 > 0.1, t(6, 0.975) 0.1 / sqrt(7) = 2.4469 * 0.03780 = 0.0925 <= 0.1: seven
    assert units_needed([0.9, 1.0, 1.1], bar=0.9, power=0.5) == 7
    # at 80%: (t(8, 0.975) + t(8, 0.8)) 0.1 / 3 = (2.3060 + 0.8889) / 30 = 0.1065 > 0.1,
    # (t(9, 0.975) + t(9, 0.8)) 0.1 / sqrt(10) = (2.2622 + 0.8834) * 0.03162 = 0.0995 <= 0.1: ten
    assert units_needed([0.9, 1.0, 1.1], bar=0.9) == 10
    assert units_needed([0.7, 0.8, 0.9], bar=0.9) == 10  # as far below: as many to show it below
    assert units_needed([0.95, 0.95], bar=0.9) == 2  # no spread
    assert units_needed([0.8, 0.9, 1.0], bar=0.9) is None  # on the bar: no number would do
    assert units_needed([0.5, 1.41], bar=0.9, most=50) is None  # mean 0.955, sd 0.643: hundreds


def result(tmp_path, name: str, rounds: list[tuple[float, float]], plain_s: float, genrec_s: float):
    """A stored overhead.py result with these (plain, genrec) events/s per round, each path's seconds over its rounds
    `plain_s` and `genrec_s`."""
    plain = sum(p for p, _ in rounds) / len(rounds)
    genrec = sum(g for _, g in rounds) / len(rounds)
    doc = {"meta": {"date": "2026-12-07 18:00 UTC", "commit": "abc1234"},
           "results": {"ratio": genrec / plain, "titles": 100, "decoding": "full",
                       "rows": [{"events_per_s": plain, "train_s": plain_s},
                                {"events_per_s": genrec, "train_s": genrec_s}],
                       "rounds": [{"plain_events_per_s": p, "events_per_s": g, "ratio": g / p} for p, g in rounds]}}
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return str(path)


def test_rounds_of_several_invocations_are_pooled_and_judged_against_the_bar(tmp_path):
    a = result(tmp_path, "a.json", [(100, 80), (100, 90)], plain_s=20, genrec_s=30)
    b = result(tmp_path, "b.json", [(200, 150)], plain_s=10, genrec_s=10)
    group = pool_group("setting", [a, b])
    assert group["rounds"] == pytest.approx([0.8, 0.9, 0.75])
    assert group["mean"] == pytest.approx(0.8166667)
    # all events over all seconds: genrec (85 * 30 + 150 * 10) / 40 over plain (100 * 20 + 200 * 10) / 30
    assert group["pooled"] == pytest.approx((4050 / 40) / (4000 / 30))
    # the invocations as units: 0.85 and 0.75, mean 0.8, sd 0.0707, t(1, 0.975) = 12.706: half width 0.6353
    assert (group["invocations_low"], group["invocations_high"]) == pytest.approx((0.8 - 0.6353, 0.8 + 0.6353),
                                                                                 abs=1e-3)
    # the invocations 0.1 below the bar at sd 0.0707: (t(5, 0.975) + t(5, 0.8)) 0.0707 / sqrt(6) = (2.5706 + 0.9195)
    # * 0.02887 = 0.1008 > 0.1, (t(6, 0.975) + t(6, 0.8)) 0.0707 / sqrt(7) = (2.4469 + 0.9057) * 0.02673 = 0.0896:
    # seven invocations like these would place it below, four in five times
    # rounds by invocation, [0.8, 0.9] and [0.75]: means 0.85 and 0.75 about 0.81667, SSB = 2 * 0.03333^2 + 0.06667^2
    # = 0.006667 on 1 df, SSW = 2 * 0.05^2 = 0.005 on 1 df: F = 1.3333; F(1, 1) is t(1)^2, so p = P(|t(1)| > 1.1547)
    # = 1 - 2 atan(1.1547) / pi = 0.4544
    assert group["between_invocations"]["f"] == pytest.approx(4 / 3)
    assert group["between_invocations"]["p"] == pytest.approx(0.4544, abs=1e-4)
    assert "| 85.0%, 75.0% | 16.5%-143.5% | 0.45 | 7 | " in table({"groups": [group]})
    one = pool_group("one invocation", [a])  # no interval over invocations, nothing to plan from
    assert "| 85.0% |  |  |  | " in table({"groups": [one]})
    assert verdict(group) == "cannot tell"  # 3 rounds: the interval is wide
    assert verdict({"low": 0.91, "high": 0.99}) == "at or above 90%"
    assert verdict({"low": 0.80, "high": 0.89}) == "below 90%"
    # the rounds' interval below the bar, the invocations' reaching above it: the wider one decides
    assert verdict({"low": 0.80, "high": 0.89, "invocations_low": 0.70, "invocations_high": 0.95}) == "cannot tell"
    single = tmp_path / "single.json"
    doc = json.loads((tmp_path / "a.json").read_text())
    del doc["results"]["rounds"]
    single.write_text(json.dumps(doc))
    with pytest.raises(SystemExit, match="without --rounds"):
        pool_group("setting", [str(single)])


def test_a_rounds_ratio_splits_into_busy_cores_and_cpu_per_event_by_hand(tmp_path):
    # epoch 1 left out; epoch 2: the plain loop 1,000 events in 10 s on 18 CPU s (1.8 cores, 0.018 CPU s an event),
    # genrec 90 events/s for 10 s on 15 CPU s (1.5 cores, 15 / 900 = 0.016667): 90% = (1.5 / 1.8) x (0.018 / 0.016667)
    plain = [{"events": 1, "train_s": 1, "cpu_s": 9}, {"events": 1000, "train_s": 10, "cpu_s": 18}]
    genrec = [{"events_per_s": 1, "epoch_time_s": 1, "cpu_s": 9}, {"events_per_s": 90, "epoch_time_s": 10, "cpu_s": 15}]
    results = {"rows": [{}, {"zero_stage": 0}], "rounds": [{"ratio": 0.9}],
               "histories": {"plain": plain, "zero0": genrec}}
    [(cores, cost)] = round_parts(results, "r.json")
    assert (cores, cost) == pytest.approx((1.5 / 1.8, 1.08))
    results["rounds"][0]["ratio"] = 0.8  # histories that do not give the round's ratio: refused, named
    with pytest.raises(SystemExit, match="r.json: round 1"):
        round_parts(results, "r.json")
    del genrec[1]["cpu_s"]  # stored before the CPU time was recorded
    assert round_parts(results, "r.json") is None


def test_the_pooled_factors_follow_each_rounds_histories(tmp_path):
    def epochs(events: float, seconds: float, cpu: float, plain: bool) -> list[dict]:
        last = ({"events": events, "train_s": seconds} if plain else
                {"events_per_s": events / seconds, "epoch_time_s": seconds})
        return [{"events": 1, "train_s": 1, "events_per_s": 1, "epoch_time_s": 1, "cpu_s": 1}, {**last, "cpu_s": cpu}]
    # round 1: plain 1,000 events in 10 s on 18 CPU s, genrec 900 in 10 s on 15: cores 1.5 / 1.8, cost 0.018 / 0.01667
    # round 2: plain 1,000 in 10 s on 16 CPU s, genrec 1,100 in 10 s on 16: cores 1, cost 0.016 / 0.014545 = 1.1
    histories = {"plain": epochs(1000, 10, 18, True), "zero0": epochs(900, 10, 15, False),
                 "plain1": epochs(1000, 10, 16, True), "zero0-1": epochs(1100, 10, 16, False)}
    doc = {"meta": {"date": "2026-12-08 00:00 UTC", "commit": "abc1234"},
           "results": {"ratio": 1.0, "rows": [{"events_per_s": 100, "train_s": 20},
                                              {"events_per_s": 100, "train_s": 20, "zero_stage": 0}],
                       "rounds": [{"ratio": 0.9}, {"ratio": 1.1}], "histories": histories}}
    path = tmp_path / "split.json"
    path.write_text(json.dumps(doc))
    group = pool_group("setting", [str(path)])
    assert group["cores"]["rounds"] == pytest.approx([1.5 / 1.8, 1.0])
    assert group["cost"]["rounds"] == pytest.approx([1.08, 1.1])
    # means 0.91667 and 1.09; the cores' interval: sd 0.11785, t(1, 0.975) 12.706: half width 1.0588 (to 197.55%)
    assert "| setting | 2 | 91.7% | -14.2%-197.6% | 109.0% |" in table({"groups": [group]})
    without = result(tmp_path, "old.json", [(100, 90)], plain_s=10, genrec_s=10)  # no histories: no factors
    assert "cores" not in pool_group("setting", [str(path), without])
    del histories["zero0-1"]
    path.write_text(json.dumps(doc))
    with pytest.raises(SystemExit, match="round 2 has no history 'zero0-1'"):
        pool_group("setting", [str(path)])
