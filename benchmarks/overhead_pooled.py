"""benchmarks/overhead.py's stored invocations of one setting, pooled: every alternated round's ratio of genrec's path
to the plain loop, their mean and a 95% interval, so that a reader can tell whether the path is at 90% of the plain
loop or only happened to be in one invocation.

    .venv/bin/python benchmarks/overhead_pooled.py --group "24k full" A.json B.json --group "100k sampled" C.json ...

Nothing is trained here: each `--group NAME FILE...` names stored results of benchmarks/overhead.py run with
`--rounds` (the same command at the same settings, at different times). One round is a plain-loop run and a genrec
run next to it (since 268b782 the rounds take turns at which goes first); its ratio is their events/s over epochs
2.. (overhead.py's per-round figure). Rounds on this kind of VM move by ±10 points as the machine's speed drifts
between the two halves of a round, so one invocation's three rounds cannot place a setting on either side of 90%;
the rounds of several invocations can, to the width of their interval. The interval is Student's t over the rounds'
ratios (rounds taken as independent draws: each pairs its own plain run with its own genrec run), and over the
invocations' own ratios, where there are two or more: rounds of one invocation share its minutes of the VM, and
invocations on other days may run on another VM, so the rounds are not independent across invocations and the
verdict takes the wider interval. Beside them, the pooled figure overhead.py reports (all events over all seconds).
A one-way ANOVA of the rounds grouped by invocation says whether an invocation's rounds sit together (then the
interval over the invocations is the one to read). A second table splits each round's ratio in two factors from the
stored CPU times: the cores each path's training process kept busy (what the processes and waits around genrec's
worker take from it) and the CPU each spent per training event (the work, which moves with the machine's speed
between the two halves of a round).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._harness import parser, write  # noqa: E402

BAR = 0.90  # issue #21, item 5: the path at 90% of the plain loop's training events/s
MOST_UNITS = 1000  # units_needed looks no further


def mean_interval(ratios: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the mean of `ratios` and its Student's t interval at `level` (two or more values)."""
    mean = statistics.fmean(ratios)
    half = stats.t.ppf(0.5 + level / 2, len(ratios) - 1) * statistics.stdev(ratios) / len(ratios) ** 0.5
    return mean, mean - half, mean + half


def units_needed(ratios: list[float], bar: float = BAR, level: float = 0.95, power: float = 0.8,
                 most: int = MOST_UNITS) -> int | None:
    """How many units (invocations) in all, at the mean and sample spread of `ratios` (two or more), before the
    two-sided Student's t interval at `level` clears `bar` on the side the mean is on with probability `power`, were
    that mean and spread the truth: the smallest n >= 2 with |mean - bar| >= (t(level) + t(power)) sd / sqrt(n), t with
    n - 1 degrees of freedom (the usual sample-size rule; power 0.5 is the n at which the interval would just touch the
    bar). None when the mean is on the bar or more than `most` would be needed; 2 when the ratios do not spread. A
    planning figure: a spread from a few units is itself uncertain."""
    mean, sd = statistics.fmean(ratios), statistics.stdev(ratios)
    gap = abs(mean - bar)
    if gap == 0:
        return None
    n = np.arange(2, most + 1)
    margin = (stats.t.ppf(0.5 + level / 2, n - 1) + stats.t.ppf(power, n - 1)) * sd / np.sqrt(n)
    enough = np.flatnonzero(gap >= margin)
    return int(n[enough[0]]) if enough.size else None


def busy(history: list[dict]) -> tuple[float, float, float]:
    """(events, seconds, CPU seconds of the training process) over epochs 2.. of one path's history in a stored
    overhead.py result, as overhead.py counts them."""
    later = history[1:] or history
    events = sum(e["events"] if "events" in e else e["events_per_s"] * e["epoch_time_s"] for e in later)
    return events, sum(e.get("train_s", e.get("epoch_time_s")) for e in later), sum(e["cpu_s"] for e in later)


def round_parts(results: dict, where: str) -> list[tuple[float, float]] | None:
    """Each round's ratio in two factors, (cores, cost): events/s = cores kept busy / CPU seconds per event, so
    genrec / plain = (genrec's busy cores / the plain loop's) x (the plain loop's CPU per event / genrec's). The first
    is what the processes and waits around genrec's training process take from it; the second, the work per event,
    moves with the machine's speed between the two halves of a round. None for results without CPU times."""
    if "histories" not in results:
        return None
    stage = results["rows"][1].get("zero_stage")
    parts = []
    for k, r in enumerate(results["rounds"]):
        plain = results["histories"]["plain" + (str(k) if k else "")]
        key = f"zero{stage}" + (f"-{k}" if k else "")
        if key not in results["histories"]:
            raise SystemExit(f"{where}: round {k + 1} has no history {key!r} of genrec's path")
        genrec = results["histories"][key]
        if any(e.get("cpu_s") is None for e in (plain[1:] or plain) + (genrec[1:] or genrec)):
            return None
        (pe, ps, pc), (ge, gs, gc) = busy(plain), busy(genrec)
        cores, cost = (gc / gs) / (pc / ps), (pc / pe) / (gc / ge)
        if abs(cores * cost - r["ratio"]) > 1e-6 * r["ratio"]:  # the factors must multiply back to the round's ratio
            raise SystemExit(f"{where}: round {k + 1}'s histories give {cores * cost:.4f}, its ratio {r['ratio']:.4f}")
        parts.append((cores, cost))
    return parts


def pool_group(name: str, files: list[str]) -> dict:
    """One setting's rounds from its stored overhead.py results."""
    rounds, pooled_plain, pooled_genrec, invocations, parts = [], [0.0, 0.0], [0.0, 0.0], [], []
    for f in files:
        doc = json.loads(Path(f).read_text())
        results = doc["results"]
        if "rounds" not in results:
            raise SystemExit(f"{f}: no per-round figures (benchmarks/overhead.py ran without --rounds 2 or more)")
        rounds += [r["ratio"] for r in results["rounds"]]
        split = round_parts(results, f) if parts is not None else None
        parts = None if split is None else parts + split
        invocations.append({"file": f, "ratio": results["ratio"], "rounds": len(results["rounds"]),
                            "date": doc["meta"]["date"],
                            "commit": doc["meta"]["commit"], "titles": results.get("titles"),
                            "decoding": results.get("decoding")})
        for row, acc in zip(results["rows"][:2], (pooled_plain, pooled_genrec)):
            acc[0] += row["events_per_s"] * row["train_s"]
            acc[1] += row["train_s"]
    mean, low, high = mean_interval(rounds)
    group = {"name": name, "rounds": rounds, "mean": mean, "low": low, "high": high,
             "pooled": (pooled_genrec[0] / pooled_genrec[1]) / (pooled_plain[0] / pooled_plain[1]),
             "invocations": invocations}
    if parts is not None:
        for key, values in zip(("cores", "cost"), zip(*parts)):
            m, lo, hi = mean_interval(list(values))
            group[key] = {"rounds": list(values), "mean": m, "low": lo, "high": hi}
    if len(invocations) > 1:
        # Rounds of one invocation share its minutes of the VM (and a later one may run on another VM), so they are
        # not independent draws across invocations: the invocations' own ratios, as the units, give the wider interval.
        _, group["invocations_low"], group["invocations_high"] = mean_interval([i["ratio"] for i in invocations])
        if len(rounds) > len(invocations):
            # Do the rounds of one invocation sit closer together than rounds of different ones? A one-way ANOVA of
            # the rounds by invocation: a small p says the invocation matters (and the interval over invocations is
            # the one to read); a large one finds no sign of it (with a few invocations, a weak test).
            by_invocation, at = [], 0
            for i in invocations:
                by_invocation.append(rounds[at:at + i["rounds"]])
                at += i["rounds"]
            test = stats.f_oneway(*by_invocation)
            group["between_invocations"] = {"f": float(test.statistic), "p": float(test.pvalue)}
    return group


def verdict(group: dict) -> str:
    """The group against BAR, on the wider of its intervals: over the rounds, and over the invocations where there are
    two or more."""
    low = min(group["low"], group.get("invocations_low", group["low"]))
    high = max(group["high"], group.get("invocations_high", group["high"]))
    if low >= BAR:
        return "at or above 90%"
    if high < BAR:
        return "below 90%"
    return "cannot tell"


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--group", nargs="+", action="append", required=True, metavar=("NAME", "FILE"),
                   help="a setting's name, then its stored overhead.py results (each run with --rounds)")
    args = p.parse_args(argv)
    groups = []
    for name, *files in args.group:
        if not files:
            p.error(f"--group {name}: name at least one results file")
        groups.append(pool_group(name, files))
    results = {"groups": groups, "bar": BAR, "level": 0.95}
    print(table(results))
    write("overhead_pooled", results, args.out)
    return 0


def table(results: dict) -> str:
    """The Markdown table of a stored pooling: each setting's rounds, their mean and interval, and what they say."""
    out = ["| setting | invocations | rounds | each round | mean of the rounds | 95% interval over the rounds | each "
           "invocation | 95% interval over the invocations | rounds by invocation, ANOVA p | invocations in all for "
           "it to clear 90% | all events over all seconds | against 90% |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for g in results["groups"]:
        each = ", ".join(f"{r:.1%}" for r in g["rounds"])
        invocations = ", ".join(f"{i['ratio']:.1%}" for i in g["invocations"])
        between = (f"{g['invocations_low']:.1%}-{g['invocations_high']:.1%}" if "invocations_low" in g else "")
        # For the reader who asks how much more running it takes, from the stored invocations' mean and spread.
        needed = ""
        if len(g["invocations"]) > 1:
            n = units_needed([i["ratio"] for i in g["invocations"]])
            needed = f"more than {MOST_UNITS:,}" if n is None else f"{n:,}"
        anova = ("" if len(g["invocations"]) < 2 else "not stored" if "between_invocations" not in g
                 else "<0.01" if g["between_invocations"]["p"] < 0.01 else f"{g['between_invocations']['p']:.2f}")
        out.append(f"| {g['name']} | {len(g['invocations'])} | {len(g['rounds'])} | {each} | {g['mean']:.1%} | "
                   f"{g['low']:.1%}-{g['high']:.1%} | {invocations} | {between} | {anova} | {needed} | "
                   f"{g['pooled']:.1%} | {verdict(g)} |")
    files = "; ".join(f"{g['name']}: " + ", ".join(f"{Path(i['file']).name} ({i['date']}, {i['commit']})"
                                                  for i in g["invocations"]) for g in results["groups"])
    out.append(f"\ngenrec's path / the plain loop per alternated round and per invocation (benchmarks/overhead.py); "
               f"Student's t intervals; the verdict on the wider of the two; ANOVA p: a one-way ANOVA of the rounds "
               f"grouped by invocation (small: rounds of one invocation sit together, read the interval over the "
               f"invocations; large: no sign of it, a weak test over few invocations); invocations in all for it to "
               f"clear 90%: how many invocations in all, were their mean and spread these, for an 80% chance that "
               f"the interval over them clears 90% on the side its mean is on (a planning figure: the spread of a few "
               f"invocations is itself uncertain, and the interval over the rounds must clear it too); from {files}")
    split = [g for g in results["groups"] if "cores" in g]
    if split:
        out += ["\nEach round's ratio in two factors, genrec / plain = (the cores each path's training process kept "
                "busy, genrec's over the plain loop's) x (CPU per training event, the plain loop's over genrec's); "
                "means and Student's t intervals over the rounds (the factors' means need not multiply to the "
                "rounds' mean):\n",
                "| setting | rounds | busy cores, genrec / plain: mean | its 95% interval over the rounds | CPU per "
                "event, plain / genrec: mean | its 95% interval over the rounds |",
                "|---|---|---|---|---|---|"]
        for g in split:
            cores, cost = g["cores"], g["cost"]
            out.append(f"| {g['name']} | {len(cores['rounds'])} | {cores['mean']:.1%} | {cores['low']:.1%}-"
                       f"{cores['high']:.1%} | {cost['mean']:.1%} | {cost['low']:.1%}-{cost['high']:.1%} |")
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
