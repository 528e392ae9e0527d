"""The synthetic generator's daily sessions and its oracle (genrec.data.synthetic): the daily-session property on
generated data, the oracle on hand-made cases, and the oracle agreeing with what the generator draws."""

from __future__ import annotations

import numpy as np
import pytest

from genrec.data import DataError, generate
from genrec.data.synthetic import (
    DAY,
    EXPLORE_SHARE,
    INTENT_CARRY,
    SERIES_CONTINUE,
    Latent,
    Oracle,
    _Catalogue,
    simulate,
)

START = 1_700_000_000
SIZE = dict(users=240, items=300, events_per_user=60, days=120, genres=10, seed=5)


@pytest.fixture(scope="module")
def daily():
    return simulate(**SIZE, sessions="daily")


@pytest.fixture(scope="module")
def scattered():
    return simulate(**SIZE)


def session_table(ds):
    """Per event: user, item (0-based), time, and whether it opens a session (first of the user, or an hour after
    the user's previous event)."""
    user = ds.events["user_id"].to_numpy()
    item = ds.events["item_id"].to_numpy() - 1
    ts = ds.events["timestamp"].to_numpy()
    first = np.r_[True, user[1:] != user[:-1]]
    opens = first | np.r_[True, np.diff(ts) >= 3600]
    return user, item, ts, first, opens


def test_daily_sessions_come_at_a_habitual_hour_on_most_days(daily, scattered):
    user, _, ts, first, opens = session_table(daily[0])
    hour = (ts[opens] - START) % DAY / 3600
    starts_user = user[opens]
    # Each user's sessions start within about an hour of their own habit; scattered ones at any hour.
    spread = [np.std(hour[starts_user == u]) for u in np.unique(starts_user) if (starts_user == u).sum() >= 4]
    assert np.median(spread) < 1.0
    s_user, _, s_ts, _, s_opens = session_table(scattered[0])
    s_hour = (s_ts[s_opens] - START) % DAY / 3600
    assert np.median([np.std(s_hour[s_user[s_opens] == u]) for u in np.unique(s_user)]) > 4.0
    # One session a day, in streaks of consecutive days: a context 48 h stale at a later session start has missed
    # at least one session most of the time (scattered sessions, days apart: a quarter of the time).
    later = opens & ~first
    day = (ts - START) // DAY
    assert np.mean(day[later] == day[np.flatnonzero(later) - 1]) < 0.05

    def missed(ts, later):  # share of later session starts with the user's previous event in the 48 h before
        return np.mean([ts[i] - ts[i - 1] < 2 * DAY for i in np.flatnonzero(later)])

    assert missed(ts, later) > 0.6
    assert missed(s_ts, s_opens & ~session_table(scattered[0])[3]) < 0.35
    # Sessions never overlap: the events of a user are in time order and a session ends before the next starts.
    assert (np.diff(ts)[~first[1:]] >= 0).all()


def test_daily_sessions_carry_genre_and_series_across_days(daily, scattered):
    def carried(ds):
        user, item, ts, first, opens = session_table(ds)
        genres = sorted({g for gs in ds.items["genres"].to_pylist() for g in gs})
        hot = np.array([[g in gs for g in genres] for gs in ds.items["genres"].to_pylist()])
        later = np.flatnonzero(opens & ~first)
        series = np.mean(item[later] == item[later - 1] + 1)
        share = np.mean((hot[item[later]] & hot[item[later - 1]]).any(axis=1))
        return series, share

    d_series, d_share = carried(daily[0])
    s_series, s_share = carried(scattered[0])
    assert d_series > 0.05 and d_series > 4 * max(s_series, 0.005)  # binge: the next part the next day
    assert d_share > s_share + 0.15  # the same genre as the session before


def test_daily_sessions_of_users_busier_than_the_span_stay_in_it():
    """A user with more sessions than days watches several times a day, each session still one of its own (an hour
    or more after the one before), within the span (up to about a dozen a day: busier ones spill past its end)."""
    ds = generate(users=30, items=200, events_per_user=150, days=5, genres=6, seed=1, sessions="daily")
    user, _, ts, first, opens = session_table(ds)
    assert np.bincount(user[opens]).max() > 5 * 5  # busier than one session a day
    assert ts.min() >= START and ts.max() < START + 6 * DAY


def test_daily_sessions_are_deterministic_and_checked():
    a, b = generate(**SIZE, sessions="daily"), generate(**SIZE, sessions="daily")
    assert a.events.equals(b.events)
    assert not a.events.equals(generate(**SIZE).events)
    launch = a.items["launch_ts"].to_numpy()
    assert (a.events["timestamp"].to_numpy() >= launch[a.events["item_id"].to_numpy() - 1]).all()
    with pytest.raises(DataError, match=r"argument 'sessions': 'hourly' is not one of scattered, daily"):
        generate(users=5, sessions="hourly")


def hand_made(daily: bool, has_genre=((1, 0), (1, 0), (0, 1), (0, 1)), has_next=(True, False, False, False)) -> Oracle:
    """Equally popular titles over three days, genres A and B, one user with taste (0.8, 0.2). By default four
    titles: 0 and 1 a two-part series of genre A, 2 and 3 standalone titles of genre B."""
    n = len(has_genre)
    cat = _Catalogue(
        genre_names=["A", "B"], genre_weight=np.array([0.5, 0.5]), has_genre=np.array(has_genre, bool),
        has_next=np.array(has_next), launch=np.full(n, START - DAY), appeal=np.ones(n), peak_days=np.ones(n),
        titles=[f"t{k}" for k in range(n)], texts=[""] * n, years=np.full(n, 2023, np.int32))
    return Oracle(Latent(cat, np.array([[0.8, 0.2]]), np.ones((3, n)), START, daily))


def test_oracle_on_hand_made_daily_cases():
    w = (1 - EXPLORE_SHARE) * np.array([0.8, 0.2]) + EXPLORE_SHARE / 2  # a fresh session's genre: (0.77, 0.23)
    by_genre = np.array([[0.5, 0.0], [0.5, 0.0], [0.0, 0.5], [0.0, 0.5]])
    t0 = START + 3600
    # Yesterday's session watched title 2 (genre B, so that session's genre was B); today's opens a new one.
    daily, scattered = hand_made(True), hand_made(False)
    prior = INTENT_CARRY * np.array([0.0, 1.0]) + (1 - INTENT_CARRY) * w  # (0.385, 0.615)
    assert daily.next_event(1, t0 + DAY, [3], [t0]) == pytest.approx(by_genre @ prior)
    assert daily.next_event(1, t0 + DAY, [3], [t0]) == pytest.approx([0.1925, 0.1925, 0.3075, 0.3075])
    assert scattered.next_event(1, t0 + DAY, [3], [t0]) == pytest.approx(by_genre @ w)  # no carry
    # Yesterday ended on part 1 of the series: today's first title is part 2 with probability SERIES_CONTINUE.
    prior = INTENT_CARRY * np.array([1.0, 0.0]) + (1 - INTENT_CARRY) * w  # (0.885, 0.115)
    expected = (1 - SERIES_CONTINUE) * (by_genre @ prior) + SERIES_CONTINUE * np.array([0, 1, 0, 0])
    assert daily.next_event(1, t0 + DAY, [1], [t0]) == pytest.approx(expected)
    assert daily.next_event(1, t0 + DAY, [1], [t0]) == pytest.approx([0.177, 0.777, 0.023, 0.023])
    # The chain over two sessions: B yesterday, then part 1 (A) a minute ago; inside a session, as before.
    p = daily.next_event(1, t0 + DAY + 60, [3, 1], [t0, t0 + DAY])
    assert p == pytest.approx([0.2, 0.8, 0.0, 0.0])
    assert scattered.next_event(1, t0 + DAY + 60, [3, 1], [t0, t0 + DAY]) == pytest.approx(p)
    # The chain: with title 2 in both genres, what the session before it watched still counts. A (title 0), then
    # title 2 (A or B): the second session's genre is A with 0.885 (carried or fresh), the new session's with
    # 0.5 x 0.885 + 0.5 x 0.77 = 0.8275; without the first session, 0.77.
    both = hand_made(True, has_genre=((1, 0), (0, 1), (1, 1)), has_next=(False, False, False))
    assert both.next_event(1, t0 + 2 * DAY, [1, 3], [t0, t0 + DAY]) == pytest.approx([0.41375, 0.08625, 0.5])
    assert both.next_event(1, t0 + 2 * DAY, [3], [t0 + DAY]) == pytest.approx([0.385, 0.115, 0.5])


def test_oracle_agrees_with_the_daily_generator(daily):
    """At every later session start of 120 users, the oracle's expected counts match what the generator drew (within
    4 standard errors): of titles continuing the previous title's series, and of titles sharing a genre with it
    (where a carried genre shows). The oracle scores the drawn titles higher than the same oracle without the carried
    structure, and never gives a drawn title probability 0."""
    ds, latent = daily
    user, item, ts, first, opens = session_table(ds)
    has = latent.cat.has_genre
    full = Oracle(latent)
    flat = Oracle(Latent(latent.cat, latent.taste, latent.popularity, latent.start_ts, False))
    begin = np.flatnonzero(first)
    later = np.flatnonzero(opens & ~first & (user <= 120))
    p_series, p_genre, log_full, log_flat = [], [], [], []
    for i in later:
        lo = begin[user[i] - 1]
        p = full.next_event(user[i], ts[i], item[lo:i] + 1, ts[lo:i])
        assert p.sum() == pytest.approx(1.0)
        p_series.append(p[item[i - 1] + 1] if item[i - 1] + 1 < len(p) else 0.0)
        p_genre.append(p[(has & has[item[i - 1]]).any(axis=1)].sum())
        log_full.append(np.log(max(p[item[i]], 1e-300)))
        log_flat.append(np.log(max(flat.next_event(user[i], ts[i], item[lo:i] + 1, ts[lo:i])[item[i]], 1e-300)))
    for expected, drawn in ((np.array(p_series), item[later] == item[later - 1] + 1),
                            (np.array(p_genre), (has[item[later]] & has[item[later - 1]]).any(axis=1))):
        assert abs(drawn.sum() - expected.sum()) < 4 * np.sqrt((expected * (1 - expected)).sum())
    assert np.mean(log_full) > np.mean(log_flat) + 0.1
    assert min(log_full) > np.log(1e-12)  # no drawn title is impossible
