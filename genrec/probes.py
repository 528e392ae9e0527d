"""Does the semantic tower match tastes, or only learn a prior per genre? A title added by POST /titles should rank
high for a user whose history is all its genre.

For each genre G with enough trained single-genre titles, one new title with only genre G (no id row, no history:
scored through the tower alone, as `POST /titles` adds it) is added per genre, all launched at the same moment; a
"G-fan" history is the G-only titles the model was trained on most, one event an hour. The probe reports, for each
G, where the new G title ranks for the G-fan (over the whole catalogue, the history's titles excluded) and among the
new titles, and where it ranks for the other genres' fans. A tower that only learned "genre G is popular" puts the
same new title first for every fan; one that matches tastes puts each fan's own genre first.
"""

from __future__ import annotations

import numpy as np
import torch

from genrec.checkpoint import TRAIN_COUNT
from genrec.recommend import Events, Ranker, titles_table
from genrec.errors import ProbeError

HOUR = 3600
NEW_ID_BASE = 9_000_000_000_000  # item ids of the probe's titles: far from any real catalogue's


def genre_fans(ranker: Ranker, history_len: int = 20, min_titles: int = 5) -> dict[str, list[int]]:
    """Genre -> catalogue indices of its trained single-genre titles, most trained first (at most history_len).
    Genres with fewer than min_titles such titles are left out: a fan of them cannot be told from noise."""
    items = ranker.loaded.items
    count = (items.column(TRAIN_COUNT).to_numpy() if TRAIN_COUNT in items.column_names
             else np.ones(items.num_rows, np.int64))
    by_genre: dict[str, list[tuple[int, int]]] = {}
    for idx, genres, c in zip(items.column("index").to_pylist(), items.column("genres").to_pylist(), count.tolist()):
        if genres and len(genres) == 1 and c > 0:
            by_genre.setdefault(genres[0], []).append((c, idx))
    return {g: [i for _, i in sorted(v, key=lambda t: (-t[0], t[1]))[:history_len]]
            for g, v in sorted(by_genre.items()) if len(v) >= min_titles}


def taste_probe(ranker: Ranker, when: int | None = None, history_len: int = 20, min_titles: int = 5) -> dict:
    """Ranks of one new single-genre title per genre for each genre's fan (1 = best). `when`: request time (Unix s;
    default two days after the catalogue's newest launch, so every title is on offer); the new titles launch a day
    before it, the fans' histories end two days before it. Adds the probe's titles to `ranker` (use a ranker of its
    own)."""
    if ranker.model.items.tower is None:
        raise ProbeError("taste probe: the checkpoint has no semantic tower (model.semantic: false); every new title "
                         "would score alike. Probe a checkpoint trained with model.semantic: true")
    if when is None:
        when = int(ranker.loaded.items.column("launch_ts").to_numpy().max()) + 48 * HOUR
    fans = genre_fans(ranker, history_len, min_titles)
    genres = list(fans)
    if len(genres) < 2:
        raise ProbeError(f"taste probe: {len(genres)} genre(s) with {min_titles}+ trained single-genre titles; "
                         "need 2 or more (lower min_titles, or probe a model trained on more genres)")
    # Genre alone (and the launch year): no title or text, whose hashed words would add the same noise to every fan.
    rows = [{"item_id": NEW_ID_BASE + k, "genres": [g]} for k, g in enumerate(genres)]
    ranker.add_titles(titles_table(rows, now=when - 24 * HOUR))
    new_idx = torch.tensor([ranker.index_of[r["item_id"]] for r in rows])
    windows = []
    for hist in fans.values():
        ts = [when - 48 * HOUR - (len(hist) - 1 - j) * HOUR for j in range(len(hist))]
        windows.append(ranker.window(Events(hist, ts, [0] * len(hist), [1.0] * len(hist))))
    scores = ranker.scores(ranker.queries(windows), [when] * len(genres))  # (fans, catalogue + 1), column 0 -inf
    # Each fan's own history is never a candidate for that fan (the app excludes seen titles).
    for f, hist in enumerate(fans.values()):
        scores[f, torch.tensor(hist)] = float("-inf")

    def rank(row: torch.Tensor, col: int, among: torch.Tensor | None = None) -> int:
        """1 + the titles scoring above row[col] or level with it (ties count against the probe's title)."""
        r = row if among is None else row[among]
        return int((r >= row[col]).sum())

    per_genre, own_first = [], 0
    for f, g in enumerate(genres):
        col = int(new_idx[f])
        finite = int(torch.isfinite(scores[f]).sum())
        rank_all = rank(scores[f], col)
        rank_new = rank(scores[f], col, new_idx)
        own_first += rank_new == 1
        # The same title for the other fans: a taste match ranks it lower there.
        others = [rank(scores[o], col) for o in range(len(genres)) if o != f]
        per_genre.append({"genre": g, "history": len(fans[g]), "rank": rank_all, "of": finite,
                          "share_above": (rank_all - 1) / max(1, finite - 1), "rank_among_new": rank_new,
                          "rank_for_other_fans": float(np.mean(others))})
    return {"genres": per_genre, "new_titles": len(genres),
            "own_genre_first": own_first / len(genres),  # chance: 1 / new_titles
            # A taste signal beside the prior: the title ranks better for its own fan than for the others on average.
            "own_fan_ranks_it_higher": float(np.mean([r["rank"] < r["rank_for_other_fans"] for r in per_genre])),
            "median_share_above": float(np.median([r["share_above"] for r in per_genre])),
            "best_new_title_for_every_fan": len({int(torch.argmax(scores[f, new_idx])) for f in range(len(genres))})
            == 1}
