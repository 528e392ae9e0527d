"""benchmarks/overhead_pooled.py: the interval over stored rounds, by hand, and the pooling of stored results."""

import json

import pytest

from benchmarks.overhead_pooled import mean_interval, pool_group, verdict


def test_the_interval_is_students_t_over_the_rounds():
    # mean 0.9, sample sd 0.1, three rounds: t(2, 0.975) = 4.3027, half width 4.3027 * 0.1 / sqrt(3) = 0.24842
    mean, low, high = mean_interval([0.8, 0.9, 1.0])
    assert mean == pytest.approx(0.9)
    assert (low, high) == pytest.approx((0.9 - 0.24842, 0.9 + 0.24842), abs=1e-4)


def result(tmp_path, name: str, rounds: list[tuple[float, float]], seconds: float = 10.0):
    """A stored overhead.py result with these (plain, genrec) events/s per round, each path `seconds` a round."""
    plain = sum(p for p, _ in rounds) / len(rounds)
    genrec = sum(g for _, g in rounds) / len(rounds)
    doc = {"meta": {"date": "2026-12-07 18:00 UTC", "commit": "abc1234"},
           "results": {"ratio": genrec / plain, "titles": 100, "decoding": "full",
                       "rows": [{"events_per_s": plain, "train_s": seconds * len(rounds)},
                                {"events_per_s": genrec, "train_s": seconds * len(rounds)}],
                       "rounds": [{"plain_events_per_s": p, "events_per_s": g, "ratio": g / p} for p, g in rounds]}}
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return str(path)


def test_rounds_of_several_invocations_are_pooled_and_judged_against_the_bar(tmp_path):
    a = result(tmp_path, "a.json", [(100, 80), (100, 90)])
    b = result(tmp_path, "b.json", [(200, 170)])
    group = pool_group("setting", [a, b])
    assert group["rounds"] == pytest.approx([0.8, 0.9, 0.85])
    assert group["mean"] == pytest.approx(0.85)
    # all events over all seconds: (80 + 90 + 170) * 10 over (100 + 100 + 200) * 10
    assert group["pooled"] == pytest.approx(340 / 400)
    assert verdict(group) == "cannot tell"  # 3 rounds: the interval is wide
    assert verdict({"low": 0.91, "high": 0.99}) == "at or above 90%"
    assert verdict({"low": 0.80, "high": 0.89}) == "below 90%"
    single = tmp_path / "single.json"
    doc = json.loads((tmp_path / "a.json").read_text())
    del doc["results"]["rounds"]
    single.write_text(json.dumps(doc))
    with pytest.raises(SystemExit, match="without --rounds"):
        pool_group("setting", [str(single)])
