"""A seeded synthetic watch log with the structure that sequential recommenders learn from.

The generative story, in the order it is drawn:

* **Catalogue.** Titles come in *series*: runs of consecutive ids (most titles stand alone, some run 2-6 parts)
  that share 1-3 genres, the first drawn by genre popularity. Each title has an appeal (heavy-tailed), a title
  "Silent River: Part 2 (2024)" with its launch year, and `text`: a few words from its genres' vocabularies
  plus filler, so text alone says something about genre.
* **Launches.** A share `new_item_share` of titles launch during the span, uniformly in time; the rest exist
  from the start (launched up to a few years before). The parts of a series launch in order.
* **Popularity over time.** A title's popularity is appeal x (baseline + hype), where hype rises after launch,
  peaks a few days to three weeks later and decays: what is popular depends on when.
* **Users.** Each has a long-term taste, a Dirichlet draw over genres concentrated on a few genres (popular
  genres more likely), and an activity level (events per user varies around `events_per_user`).
* **Sessions.** A user's events come in sessions (5 events on average) days apart; events inside a session are
  seconds to minutes apart. Each session has a short-term intent: one genre drawn from the user's taste (or, now
  and then, any genre: exploration). Its titles are drawn from that genre by popularity on that day, among those
  already launched, so new titles reach the users whose tastes match their genres.
* **Series order.** Within a session, after part j the user often goes on to part j+1 (when it has launched):
  next-title prediction can beat popularity.
* **Daily sessions** (`sessions="daily"`; the default, `"scattered"`, is the story above). Streaming users watch at
  their habitual hour (an evening hour each, +-30 min a day), one session a day, in streaks of consecutive days
  (STREAK_DAYS on average) with days off between them (several sessions a day only for a user with more sessions
  than the span has days), and carry what they watched into the next day: a session keeps
  the previous session's genre with probability INTENT_CARRY, and its first title often continues the series the
  previous session ended in (the same SERIES_CONTINUE). So a context 24-48 h stale misses sessions that decide the
  next ones, which is what multi-token prediction is for.
* **Feedback.** utility is a watch fraction in (0, 1], higher when the title's genres match the user's taste;
  action is 0 (watch) or, for a small share that grows with utility, 1 (rate).
"""

from __future__ import annotations

import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genrec.data.schema import EVENT_SCHEMA, ITEM_SCHEMA, DataError, Dataset, validate

DAY = 86_400

# Genre names and a few words each: the first `genres` are used, then "Genre 19", ... with made-up words.
_GENRE_WORDS = {
    "Drama": ("family", "loss", "struggle", "redemption"),
    "Comedy": ("laughs", "awkward", "prank", "wedding"),
    "Action": ("explosion", "chase", "mercenary", "showdown"),
    "Thriller": ("conspiracy", "hostage", "paranoia", "escape"),
    "Romance": ("love", "kiss", "heartbreak", "date"),
    "Crime": ("heist", "detective", "mob", "murder"),
    "Adventure": ("quest", "treasure", "jungle", "voyage"),
    "Sci-Fi": ("spaceship", "alien", "robot", "future"),
    "Horror": ("ghost", "haunted", "blood", "curse"),
    "Fantasy": ("dragon", "wizard", "kingdom", "magic"),
    "Animation": ("cartoon", "animated", "talking-animals", "pixar-style"),
    "Documentary": ("interview", "archive", "true-story", "nature"),
    "Mystery": ("clue", "whodunit", "secret", "disappearance"),
    "Children": ("kids", "school", "puppy", "friendship"),
    "Musical": ("song", "dance", "broadway", "band"),
    "War": ("soldier", "battle", "trenches", "resistance"),
    "Western": ("cowboy", "outlaw", "frontier", "saloon"),
    "Film-Noir": ("femme-fatale", "shadows", "private-eye", "double-cross"),
}
_FILLER = ("story", "film", "classic", "new", "award", "director", "cast", "original", "sequel", "acclaimed")
_ADJECTIVES = ("Silent", "Crimson", "Broken", "Golden", "Hidden", "Last", "Lost", "Midnight", "Savage", "Secret",
               "Distant", "Electric", "Frozen", "Wild", "Iron", "Burning", "Quiet", "Endless", "Dark", "Bright")
_NOUNS = ("River", "Empire", "Garden", "Horizon", "Mirror", "Signal", "Harbor", "Kingdom", "Promise", "Storm",
          "Letter", "Circle", "Frontier", "Shadow", "Winter", "Engine", "Orchard", "Tide", "Crown", "Road")

GENRE_ZIPF = 0.8  # genre popularity ~ 1 / rank^GENRE_ZIPF
TASTE_CONCENTRATION = 3.0  # Dirichlet total: small = each user sticks to few genres
STANDALONE_SHARE = 0.6  # titles outside any series
SERIES_PARTS = (2, 6)  # parts of a series, inclusive range
EXTRA_GENRE_P = (0.4, 0.4, 0.2)  # P(0, 1, 2 genres besides the first)
APPEAL_SIGMA = 1.0  # log-normal spread of titles' appeal
HYPE_PEAK_DAYS = (3.0, 21.0)  # days from launch to peak popularity
HYPE_BASELINE = 0.1  # popularity long after launch, relative to the peak
CATALOGUE_AGE_DAYS = 365.0  # mean age at the start of titles that exist from the start
ACTIVITY_SIGMA = 0.6  # log-normal spread of events per user
SESSION_MEAN_EVENTS = 5.0  # geometric session lengths
EVENT_GAP_S = (20.0, 150.0)  # within a session: minimum + exponential mean, seconds
SESSION_MIN_GAP_S = 6 * 3600  # sessions are at least this far apart (when the span leaves room)
EXPLORE_SHARE = 0.1  # sessions whose genre ignores the user's taste
SERIES_CONTINUE = 0.6  # P(next part of a series follows the previous one in a session, when launched)
INTENT_CARRY = 0.5  # daily sessions: P(a session keeps the previous session's genre)
HABIT_HOUR = (20.0, 2.0)  # daily sessions: mean and spread of a user's habitual hour, clipped to HABIT_RANGE_H
HABIT_RANGE_H = (9.0, 22.0)
HABIT_JITTER_S = 1800.0  # daily sessions: a session's start differs from the habit by N(0, this), clipped to 2x
STREAK_DAYS = 4.0  # daily sessions: mean run of consecutive days with a session
DAILY_GAP_S = 3 * 3600  # daily sessions: at least this between the end of a session and the next start
SESSION_KINDS = ("scattered", "daily")
UTILITY_CONCENTRATION = 6.0  # Beta concentration of the watch fraction around its mean
RATE_SHARE = (0.02, 0.1)  # P(action = rate) = a + b * utility


@dataclass
class _Catalogue:
    genre_names: list[str]
    genre_weight: np.ndarray  # (genres,) popularity of each genre, sums to 1
    has_genre: np.ndarray  # (items, genres) bool, multi-hot
    has_next: np.ndarray  # (items,) bool: the next id is the next part of the same series
    launch: np.ndarray  # (items,) int64 Unix seconds
    appeal: np.ndarray  # (items,)
    peak_days: np.ndarray  # (items,)
    titles: list[str]
    texts: list[str]
    years: np.ndarray  # (items,) int32


def generate(users: int = 600, items: int = 400, events_per_user: int = 60, days: int = 120, genres: int = 12,
             seed: int = 0, start_ts: int = 1_700_000_000, new_item_share: float = 0.2,
             sessions: str = "scattered") -> Dataset:
    """A deterministic (per seed) synthetic dataset in the canonical schema.

    users: number of users (ids 1..users); every user has at least 2 events.
    items: number of titles (ids 1..items); a few may never be watched.
    events_per_user: mean events per user (individual counts vary log-normally around it).
    days: length of the span; sessions start in [start_ts, start_ts + days * 86400).
    genres: number of genres (the first 18 named like MovieLens', then "Genre 19", ...).
    seed: seed of the numpy Generator; the same arguments give the same dataset.
    start_ts: Unix seconds at which the span starts.
    new_item_share: share of titles launched during the span (uniformly in time); the others exist from the
        start. At least one title always exists from the start, so the first sessions have something to watch.
    sessions: "scattered" (sessions at random times, days apart) or "daily" (at each user's habitual hour on most
        days, genre and series carried from one session to the next; the module docstring tells both).
    """
    return simulate(users, items, events_per_user, days, genres, seed, start_ts, new_item_share, sessions)[0]


@dataclass
class Latent:
    """The generator's hidden state: enough to score any (user, time) as the generator draws (see Oracle)."""

    cat: _Catalogue
    taste: np.ndarray  # (users, genres)
    popularity: np.ndarray  # (days, items)
    start_ts: int
    daily: bool = False  # sessions="daily": genre and series carried across sessions


def simulate(users: int = 600, items: int = 400, events_per_user: int = 60, days: int = 120, genres: int = 12,
             seed: int = 0, start_ts: int = 1_700_000_000, new_item_share: float = 0.2,
             sessions: str = "scattered") -> tuple[Dataset, Latent]:
    """`generate`, plus the latent state the events were drawn from."""
    _check(users=users, items=items, events_per_user=events_per_user, days=days, genres=genres)
    _check_share(new_item_share)
    _check_sessions(sessions)
    rng = np.random.default_rng(seed)
    cat = _catalogue(rng, items, genres, days, start_ts, new_item_share)
    daily = sessions == "daily"
    user, item, ts, utility, action, taste, popularity = _interactions(rng, cat, users, events_per_user, days,
                                                                       start_ts, daily)
    events = _event_table(user + 1, item, ts, utility, action)
    return (validate(Dataset(events, _item_table(cat), "synthetic"), "synthetic"),
            Latent(cat, taste, popularity, start_ts, daily))


def _event_table(user_id: np.ndarray, item: np.ndarray, ts: np.ndarray, utility: np.ndarray,
                 action: np.ndarray) -> pa.Table:
    return pa.table({
        "user_id": pa.array(user_id, pa.int64()),
        "item_id": pa.array(item + 1, pa.int64()),
        "timestamp": pa.array(ts, pa.int64()),
        "action": pa.array(action, pa.int32()),
        "utility": pa.array(utility, pa.float32()),
    }, schema=EVENT_SCHEMA)


def _item_table(cat: _Catalogue) -> pa.Table:
    genre_lists = [[cat.genre_names[g] for g in np.flatnonzero(row)] for row in cat.has_genre]
    return pa.table({
        "item_id": pa.array(np.arange(1, len(cat.launch) + 1), pa.int64()),
        "title": pa.array(cat.titles, pa.string()),
        "genres": pa.array(genre_lists, pa.list_(pa.string())),
        "year": pa.array(cat.years, pa.int32()),
        "launch_ts": pa.array(cat.launch, pa.int64()),
        "text": pa.array(cat.texts, pa.string()),
    }, schema=ITEM_SCHEMA)


def write_events(out_dir: str | Path, users: int, items: int, events_per_user: int = 100, days: int = 120,
                 genres: int = 18, seed: int = 0, start_ts: int = 1_700_000_000, new_item_share: float = 0.2,
                 users_per_chunk: int = 20_000, echo=print) -> dict:
    """The generator at any size, in bounded memory: `out_dir/items.parquet` and `out_dir/events/part-NNNNN.parquet`,
    one file per block of `users_per_chunk` users (ids continue across blocks), each drawn from its own seeded stream
    (seed, block) over one shared catalogue. Same story as `generate` (which draws every user from one stream, so
    the events differ from it); the events of a block are sorted by (user, time). Returns counts. The folder appears
    only once complete (written beside it, then renamed)."""
    _check(users=users, items=items, events_per_user=events_per_user, days=days, genres=genres,
           users_per_chunk=users_per_chunk)
    _check_share(new_item_share)
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise DataError(f"{out_dir}: already exists; remove it or write the events elsewhere")
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    (tmp / "events").mkdir(parents=True)
    try:
        cat = _catalogue(np.random.default_rng(seed), items, genres, days, start_ts, new_item_share)
        pq.write_table(_item_table(cat), tmp / "items.parquet")
        total, blocks = 0, -(-users // users_per_chunk)
        t0 = time.perf_counter()
        for b in range(blocks):
            n = min(users_per_chunk, users - b * users_per_chunk)
            user, item, ts, utility, action, _, _ = _interactions(np.random.default_rng([seed, b + 1]), cat, n,
                                                                  events_per_user, days, start_ts)
            table = _event_table(user + 1 + b * users_per_chunk, item, ts, utility, action)
            pq.write_table(table, tmp / "events" / f"part-{b:05d}.parquet")
            total += table.num_rows
            if (b + 1) % max(1, blocks // 10) == 0 or b + 1 == blocks:
                echo(f"  {b + 1}/{blocks} blocks, {total:,} events ({total / (time.perf_counter() - t0):,.0f}/s)")
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"users": users, "items": items, "events": total, "files": blocks}


def _check(**counts: int) -> None:
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise DataError(f"synthetic: argument '{name}': {value!r} is not a positive integer; pass one >= 1")


def _check_sessions(sessions: str) -> None:
    if sessions not in SESSION_KINDS:
        raise DataError(f"synthetic: argument 'sessions': {sessions!r} is not one of {', '.join(SESSION_KINDS)}")


def _check_share(new_item_share: float) -> None:
    if not 0.0 <= new_item_share <= 1.0:
        raise DataError(f"synthetic: argument 'new_item_share': {new_item_share} is not in [0, 1]; pass a share")


def _genre_vocabulary(genres: int) -> tuple[list[str], list[tuple[str, ...]]]:
    named = list(_GENRE_WORDS.items())[:genres]
    names = [n for n, _ in named] + [f"Genre {k + 1}" for k in range(len(named), genres)]
    words = [w for _, w in named] + [tuple(f"genre{k + 1}-{c}" for c in "abcd") for k in range(len(named), genres)]
    return names, words


def _catalogue(rng: np.random.Generator, items: int, genres: int, days: int, start_ts: int,
               new_item_share: float) -> _Catalogue:
    names, words = _genre_vocabulary(genres)
    genre_weight = 1.0 / np.arange(1, genres + 1) ** GENRE_ZIPF
    genre_weight = rng.permutation(genre_weight / genre_weight.sum())

    # Series: draw lengths until they cover the catalogue, then trim the last one.
    lengths = np.where(rng.random(items) < STANDALONE_SHARE, 1, rng.integers(SERIES_PARTS[0], SERIES_PARTS[1] + 1,
                                                                            items))
    n_series = int(np.searchsorted(np.cumsum(lengths), items)) + 1
    lengths = lengths[:n_series]
    lengths[-1] -= lengths.sum() - items
    series = np.repeat(np.arange(n_series), lengths)
    part = np.arange(items) - np.repeat(np.cumsum(lengths) - lengths, lengths)

    # Each series' genres: a weighted draw without replacement (Gumbel top-k); the first is the main genre.
    keys = np.log(genre_weight) + rng.gumbel(size=(n_series, genres))
    rank = np.argsort(np.argsort(-keys, axis=1), axis=1)
    n_genres = np.minimum(1 + rng.choice(len(EXTRA_GENRE_P), n_series, p=EXTRA_GENRE_P), genres)
    has_genre = (rank < n_genres[:, None])[series]

    span = days * DAY
    n_new = min(round(new_item_share * items), items - 1)
    is_new = np.zeros(items, dtype=bool)
    is_new[rng.choice(items, n_new, replace=False)] = True
    launch = np.where(is_new, start_ts + rng.uniform(0, span, items),
                      start_ts - 1 - rng.exponential(CATALOGUE_AGE_DAYS * DAY, items))
    # Series ids are contiguous, so sorting by (series, launch) hands each series' times to its parts in order.
    launch = np.floor(launch[np.lexsort((launch, series))]).astype(np.int64)
    years = (launch.astype("datetime64[s]").astype("datetime64[Y]").astype(np.int64) + 1970).astype(np.int32)

    titles = _titles(rng, series, part, lengths, years)
    texts = _texts(rng, has_genre, words)
    return _Catalogue(
        genre_names=names, genre_weight=genre_weight, has_genre=has_genre,
        has_next=np.r_[series[1:] == series[:-1], False], launch=launch,
        appeal=rng.lognormal(0.0, APPEAL_SIGMA, items), peak_days=rng.uniform(*HYPE_PEAK_DAYS, items),
        titles=titles, texts=texts, years=years,
    )


def _titles(rng: np.random.Generator, series: np.ndarray, part: np.ndarray, lengths: np.ndarray,
            years: np.ndarray) -> list[str]:
    """'Silent River (2023)', or 'Silent River: Part 2 (2024)' inside a series; names repeat with a number
    only once every adjective-noun pair is taken."""
    pairs = len(_ADJECTIVES) * len(_NOUNS)
    names = []
    for k, code in enumerate(rng.permutation(max(len(lengths), pairs))[: len(lengths)]):
        adjective, noun = _ADJECTIVES[code % pairs // len(_NOUNS)], _NOUNS[code % pairs % len(_NOUNS)]
        names.append(f"{adjective} {noun}" + (f" {code // pairs + 1}" if code >= pairs else ""))
    return [f"{names[s]}: Part {p + 1} ({y})" if lengths[s] > 1 else f"{names[s]} ({y})"
            for s, p, y in zip(series, part, years)]


def _texts(rng: np.random.Generator, has_genre: np.ndarray, words: list[tuple[str, ...]],
           per_item: int = 4) -> list[str]:
    """A few distinct words per title: mostly from its genres' vocabularies, some filler."""
    items = len(has_genre)
    genre = _draw_rows(has_genre.astype(float), np.repeat(np.arange(items), per_item), rng).reshape(items, per_item)
    word = rng.integers(0, 4, (items, per_item))
    filler = rng.random((items, per_item)) < 0.25
    filler_word = rng.integers(0, len(_FILLER), (items, per_item))
    return [" ".join(dict.fromkeys(_FILLER[fw] if f else words[g][w] for g, w, f, fw in zip(gs, ws, fs, fws)))
            for gs, ws, fs, fws in zip(genre, word, filler, filler_word)]


def _draw_rows(weights: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each entry of `rows`, a column drawn with probability proportional to weights[row] (rows > 0)."""
    cdf = np.cumsum(weights, axis=1)
    cdf /= cdf[:, -1:]
    # Offsetting row r's CDF by r makes all rows one increasing array: one searchsorted serves every draw.
    flat = (cdf + np.arange(len(weights))[:, None]).ravel()
    position = np.searchsorted(flat, rows + rng.random(len(rows)), side="right")
    return np.minimum(position - rows * weights.shape[1], weights.shape[1] - 1)


def _popularity(cat: _Catalogue, days: int, start_ts: int) -> np.ndarray:
    """(days, items): each title's popularity on each day, 0 until the day after its launch. Dense, so memory is
    days x items floats (120 x 10^4 titles: 10 MB)."""
    day_start = start_ts + np.arange(days) * DAY
    age = np.clip((day_start[:, None] + DAY / 2 - cat.launch[None, :]) / DAY / cat.peak_days[None, :], 0.0, None)
    hype = age * np.exp(1.0 - age)  # 0 at launch, 1 at the peak, then decays
    # Only titles launched before the day starts: every session that day starts later, so no event precedes
    # its title's launch.
    return cat.appeal * (HYPE_BASELINE + hype) * (cat.launch[None, :] < day_start[:, None])


def _interactions(rng: np.random.Generator, cat: _Catalogue, users: int, events_per_user: int, days: int,
                  start_ts: int, daily: bool = False) -> tuple[np.ndarray, ...]:
    """-> (user, item, timestamp, utility, action) arrays (0-based user and item), sorted by user and time, then
    the users' tastes (users, genres) and the titles' popularity (days, items) they were drawn from. daily: the
    daily-session story (module docstring); without it no draw differs from before it existed."""
    genres = len(cat.genre_names)
    taste = rng.dirichlet(TASTE_CONCENTRATION * cat.genre_weight + 1e-3, users)
    activity = rng.lognormal(-ACTIVITY_SIGMA**2 / 2, ACTIVITY_SIGMA, users)
    n_events = np.maximum(2, np.round(events_per_user * activity)).astype(np.int64)

    user = np.repeat(np.arange(users), n_events)
    n = len(user)
    first_of_user = np.r_[True, user[1:] != user[:-1]]
    starts_session = first_of_user | (rng.random(n) < 1.0 / SESSION_MEAN_EVENTS)
    session = np.cumsum(starts_session) - 1
    session_first = np.flatnonzero(starts_session)
    session_user = user[session_first]
    position = np.arange(n) - session_first[session]

    # Inside a session: seconds-to-minutes gaps. Offsets from the session start are a per-session cumsum.
    gaps = np.where(starts_session, 0.0, EVENT_GAP_S[0] + rng.exponential(EVENT_GAP_S[1], n))
    elapsed = np.cumsum(gaps)
    offset = elapsed - elapsed[session_first][session]
    duration = np.r_[offset[session_first[1:] - 1], offset[-1]]

    if daily:
        session_start = _daily_session_starts(rng, session_user, duration, users, days) + start_ts
    else:
        session_start = _session_starts(rng, session_user, duration, users, days * DAY) + start_ts
    session_day = np.clip(((session_start - start_ts) // DAY).astype(np.int64), 0, days - 1)
    explore = rng.random(len(session_user)) < EXPLORE_SHARE
    session_genre = np.where(explore, rng.integers(0, genres, len(session_user)),
                             _draw_rows(taste, session_user, rng))
    if daily:
        session_genre = _carry_intent(rng, session_genre, session_user)
    ts = np.floor(session_start[session] + offset).astype(np.int64)

    popularity = _popularity(cat, days, start_ts)
    fresh = _fresh_titles(rng, cat, popularity, session_genre[session], session_day[session])
    # Daily sessions continue series across sessions: the position that counts is then the user's, not the session's.
    item = _follow_series(rng, cat, fresh, np.arange(n) - np.flatnonzero(first_of_user)[user] if daily else position,
                          ts)

    # Watch fraction: higher when the title carries the user's favourite genres.
    match = np.minimum((cat.has_genre[item] * taste[user]).sum(axis=1) / taste[user].max(axis=1), 1.0)
    mean = 0.2 + 0.7 * match
    utility = np.clip(rng.beta(mean * UTILITY_CONCENTRATION, (1 - mean) * UTILITY_CONCENTRATION), 0.01, 1.0)
    action = (rng.random(n) < RATE_SHARE[0] + RATE_SHARE[1] * utility).astype(np.int32)
    return user, item, ts, utility, action, taste, popularity


def _session_starts(rng: np.random.Generator, session_user: np.ndarray, duration: np.ndarray, users: int,
                    span: float) -> np.ndarray:
    """Session start offsets in [0, span): each user's free time (span minus time in sessions) is cut into
    random gaps, one before each session and one after the last, each at least SESSION_MIN_GAP_S when room."""
    per_user = np.bincount(session_user, minlength=users)
    free = np.maximum(span - np.bincount(session_user, weights=duration, minlength=users), 0.0)
    min_gap = np.minimum(SESSION_MIN_GAP_S, free / (2 * (per_user + 1)))
    share = rng.exponential(1.0, len(session_user))
    total = np.bincount(session_user, weights=share, minlength=users) + rng.exponential(1.0, users)
    u = session_user
    gap = min_gap[u] + (free[u] - (per_user[u] + 1) * min_gap[u]) * share / total[u]
    # start_k = gaps up to k + durations before k, as a per-user running sum.
    first = np.r_[True, u[1:] != u[:-1]]
    step = gap + np.where(first, 0.0, np.r_[0.0, duration[:-1]])
    running = np.cumsum(step)
    return running - (running - step)[first][np.cumsum(first) - 1]


def _daily_session_starts(rng: np.random.Generator, session_user: np.ndarray, duration: np.ndarray, users: int,
                          days: int) -> np.ndarray:
    """Daily session start offsets (seconds from the span's start): a user's sessions fall on consecutive days in
    streaks (each session after the first starts a new streak with probability 1 / STREAK_DAYS), the user's free
    days (the span's days minus their sessions) cut into random gaps before each streak and after the last. A user
    with more sessions than days spreads them evenly, several a day, spread over the day. Each day's session starts at
    the user's habitual hour plus that day's jitter; one that would come too soon after the session before it starts
    DAILY_GAP_S after that one ends (an hour and a bit for a crowded user's: still a session of its own; beyond about
    a dozen sessions a day they no longer fit in it, and the last ones spill past the span's end)."""
    n = len(session_user)
    per_user = np.bincount(session_user, minlength=users)
    first = np.r_[True, session_user[1:] != session_user[:-1]]
    user_start = np.flatnonzero(first)
    index = np.arange(n) - user_start[session_user]  # the session's number among its user's
    streak = first | (rng.random(n) < 1.0 / STREAK_DAYS)
    share = rng.exponential(1.0, n) * streak
    total = np.bincount(session_user, weights=share, minlength=users) + rng.exponential(1.0, users)
    free = np.maximum(days - per_user, 0)[session_user]
    gaps = np.cumsum(free * share / total[session_user])
    gaps -= (gaps - free * share / total[session_user])[user_start][session_user]  # per-user running sum
    sessions = per_user[session_user]
    crowded = sessions > days
    day = np.where(crowded, index * days // sessions, index + np.floor(gaps + 1e-9).astype(np.int64))
    day = np.minimum(day, days - 1)
    habit = np.clip(rng.normal(HABIT_HOUR[0], HABIT_HOUR[1], users), *HABIT_RANGE_H) * 3600
    jitter = np.clip(rng.normal(0.0, HABIT_JITTER_S, n), -2 * HABIT_JITTER_S, 2 * HABIT_JITTER_S)
    # A crowded user's m sessions a day are spread over it, DAY / m apart, with gaps that fit them in a day.
    per_day = np.maximum(1, -(-sessions // days))
    within_day = index - (-(-day * sessions // days))
    wanted = day * float(DAY) + np.maximum(
        0.0, jitter + np.where(crowded, (within_day + 0.5) * DAY / per_day, habit[session_user]))
    min_gap = np.minimum(DAILY_GAP_S, np.maximum(1.05 * SESSION_GAP_S, DAY / (2.0 * per_day)))
    # start_i = max(wanted_i, start_{i-1} + duration_{i-1} + gap): with C_i the durations and gaps before i,
    # start_i = C_i + max_{j <= i} (wanted_j - C_j), a running max that restarts with each user (a per-user offset
    # far larger than any time keeps one user's maxima from reaching the next user).
    step = np.where(first, 0.0, np.r_[0.0, duration[:-1]] + min_gap)
    running = np.cumsum(step)
    c = running - running[first][np.cumsum(first) - 1]
    offset = session_user * (2.0 * ((days + 1) * DAY + running[-1]) + 1.0)
    return c + np.maximum.accumulate(wanted - c + offset) - offset


def _carry_intent(rng: np.random.Generator, genre: np.ndarray, session_user: np.ndarray) -> np.ndarray:
    """Each session after a user's first keeps the previous session's genre with probability INTENT_CARRY (so a
    run of carried sessions all have the genre of the run's first)."""
    first = np.r_[True, session_user[1:] != session_user[:-1]]
    carried = ~first & (rng.random(len(genre)) < INTENT_CARRY)
    return genre[np.maximum.accumulate(np.where(carried, 0, np.arange(len(genre))))]


def _fresh_titles(rng: np.random.Generator, cat: _Catalogue, popularity: np.ndarray, genre: np.ndarray,
                  day: np.ndarray) -> np.ndarray:
    """For each event, a title of its session's genre drawn by that day's popularity among launched titles
    (any launched title when the genre has none yet; at least one title exists from the start)."""
    item = np.empty(len(genre), dtype=np.int64)
    for g in range(len(cat.genre_names)):
        members = np.flatnonzero(cat.has_genre[:, g])
        weights = popularity[:, members]
        has_any = weights.sum(axis=1) > 0
        chosen = np.flatnonzero(genre == g)
        in_genre = chosen[has_any[day[chosen]]]
        if len(in_genre):
            safe = np.where(has_any[:, None], weights, 1.0)  # rows never drawn from, kept valid for the CDF
            item[in_genre] = members[_draw_rows(safe, day[in_genre], rng)]
        fallback = chosen[~has_any[day[chosen]]]
        if len(fallback):
            item[fallback] = _draw_rows(popularity, day[fallback], rng)
    return item


def _follow_series(rng: np.random.Generator, cat: _Catalogue, fresh: np.ndarray, position: np.ndarray,
                   ts: np.ndarray) -> np.ndarray:
    """Replace the fresh title by the next part of the previous title's series, often, when that part has
    launched, at every `position` after 0: the position in the session (within sessions only) or in the user's
    events (daily sessions: across sessions too). Sequential by position, vectorised across sessions or users."""
    item = fresh.copy()
    goes_on = rng.random(len(item)) < SERIES_CONTINUE
    by_position = np.argsort(position, kind="stable")
    bounds = np.searchsorted(position[by_position], np.arange(1, position.max() + 2))
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        idx = by_position[lo:hi]
        prev = item[idx - 1]
        nxt = np.minimum(prev + 1, len(cat.launch) - 1)
        ok = goes_on[idx] & cat.has_next[prev] & (cat.launch[nxt] <= ts[idx])
        item[idx] = np.where(ok, nxt, fresh[idx])
    return item


SESSION_GAP_S = 3600  # events closer than this belong to one session (the generator's gaps inside: seconds-minutes)


class Oracle:
    """The generator's own probabilities: a reference for each task on synthetic data.

    **Next event** (exact): at a request by user u at time r, the generator's next event either opens a session --
    a genre g, then a title of g by that day's popularity among launched titles (any launched title when g has none)
    -- or, when the context's last event is under an hour old, continues the current session: the session's genre or,
    with probability SERIES_CONTINUE, the next part of the last title's series. A session's genre is fresh, from
    (1 - EXPLORE_SHARE) x taste_u + EXPLORE_SHARE / genres; with daily sessions it is the previous session's genre
    with probability INTENT_CARRY, and a session's first title continues the previous title's series as inside a
    session. The genres of a user's sessions are then a hidden Markov chain, and the posterior of the current one
    comes from a forward pass over every session of the context (without carry, from the current session's events
    alone). Ranking by that probability is Bayes-optimal for the next event; the "next" task's target is that event
    unless it repeats a title of the context, and the popular pool restricts the same scores.

    **Horizon** (approximate): the mean over the horizon's days of the session-opening probabilities from the
    user's taste, i.e. the expected share of the user's future sessions that pick the title (series continuations,
    carried genres and repeats aside). **Cold** targets (the first cold title at or after the request) are ranked by
    the next-event probabilities."""

    def __init__(self, latent: Latent):
        self.lat = latent
        cat = latent.cat
        pop = latent.popularity  # (days, items)
        has = cat.has_genre.astype(np.float64)  # (items, genres)
        z = pop @ has  # (days, genres): total popularity of each genre's launched titles
        total = pop.sum(axis=1, keepdims=True)
        # P(title | genre, day), with the generator's fallback for a genre with nothing launched yet.
        self.by_genre = np.where(z[:, None, :] > 0, pop[:, :, None] * has[None] / np.where(z > 0, z, 1)[:, None, :],
                                 pop[:, :, None] / np.where(total > 0, total, 1)[:, :, None])  # (days, items, g)
        genres = len(cat.genre_names)
        self.weights = (1 - EXPLORE_SHARE) * latent.taste + EXPLORE_SHARE / genres  # (users, genres)
        self.carry = INTENT_CARRY if latent.daily else 0.0

    def _day(self, ts) -> np.ndarray:
        days = self.lat.popularity.shape[0]
        return np.clip((np.asarray(ts, np.int64) - self.lat.start_ts) // DAY, 0, days - 1)

    def _continues(self, prev: int, ts: int) -> float:
        """P(the series' next part follows 0-based title prev at time ts)."""
        cat = self.lat.cat
        nxt = prev + 1
        return SERIES_CONTINUE if cat.has_next[prev] and nxt < len(cat.launch) and cat.launch[nxt] <= ts else 0.0

    def next_event(self, user: int, ts: int, context_items, context_ts) -> np.ndarray:
        """(items,): P(next title) for 1-based `user` at time `ts`, given the context (1-based item ids, times)."""
        items = np.asarray(context_items, np.int64) - 1
        times = np.asarray(context_ts, np.int64)
        n = len(items)
        opens = np.r_[True, np.diff(times) >= SESSION_GAP_S] if n else np.zeros(0, bool)
        request_opens = not n or ts - times[-1] >= SESSION_GAP_S
        # Without carry only the current session's events say anything about its genre.
        first = 0 if self.carry else (n if request_opens else int(np.flatnonzero(opens)[-1]))
        weights = self.weights[user - 1]
        post, by_genre = None, None
        for k in range(first, n + 1):
            at = ts if k == n else times[k]
            if (request_opens if k == n else opens[k]):
                # A session opens: its genre's prior, its day's title draw, a series carried over (daily only).
                post = weights if post is None else self.carry * post + (1 - self.carry) * weights
                by_genre = self.by_genre[self._day(at)]
                c = self._continues(items[k - 1], at) if k > 0 and self.lat.daily else 0.0
            else:
                c = self._continues(items[k - 1], at)
            if k == n:
                p = (1 - c) * (by_genre @ post)
                if c:
                    p[items[-1] + 1] += c
                return p
            post = post * ((1 - c) * by_genre[items[k]] + (c if k > 0 and items[k] == items[k - 1] + 1 else 0.0))
            post = post / post.sum() if post.sum() > 0 else post
        raise AssertionError("unreachable: the loop returns at k == n")

    def horizon(self, user: int, ts: int, start_s: float, end_s: float) -> np.ndarray:
        """(items,): mean session probability over the days of [ts + start_s, ts + end_s) inside the span."""
        d0, d1 = self._day(ts + start_s), self._day(ts + end_s - 1)
        return self.by_genre[np.arange(d0, d1 + 1)].mean(axis=0) @ self.weights[user - 1]
