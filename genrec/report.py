"""The sweep report: one self-contained HTML page (plots inlined) and a Markdown twin with PNG files beside it.

`write_report(analysis, out_dir, meta)` takes the dict of `genrec.study.analyse` and writes:

    report.html        self-contained: tables and the plots as inline PNG
    report.md          the same tables, linking the PNG files
    fits.png           per task: MRR against backbone size, the offset power-law fit, P0 and its interval,
                       the log-linear fit, and (synthetic data) the generator's ceiling
    stability.png      retrain cost against top-k overlap and MRR spread across retrains, with Spearman's rho
    gains.png          each task's gain from the smallest to the largest backbone, as a share of the next-event gain,
                       against the task's headroom
    curves.png         loss and primary-task MRR per epoch of every fresh retrain
    analysis.json      the numbers behind it all

Plots are matplotlib with the Agg backend (no display needed).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from pathlib import Path

import numpy as np

from genrec.analysis import (CostModel, Interval, LogLinearFit, PowerLawFit, pairs_for_clear_interval, retrains_for_gain,
                             spearman)
from genrec.selection import EARLY_STOPPING, MAX_EPOCHS, TIME_BUDGET
from genrec.storage import atomic_write_bytes


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{v:,}"
    if isinstance(v, (float, np.floating)):
        if not math.isfinite(v):
            return "n/a"
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3g}"
        if abs(v) >= 100:
            return f"{v:,.0f}"
        return f"{v:.1f}" if abs(v) >= 10 else f"{v:.{digits}f}"
    return str(v)


def _params(n) -> str:
    n = float(n)
    if not math.isfinite(n):
        return "n/a"
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


class Table:
    def __init__(self, columns: list[str], rows: list[list]):
        self.columns, self.rows = columns, [[_fmt(c) if not isinstance(c, str) else c for c in r] for r in rows]

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(lines)

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in self.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# --------------------------------------------------------------------------------------------------- plots

def _plt():
    """matplotlib with its file-only backend, imported when a plot is drawn: it is slow to import, and every command
    that imports this module (through genrec.study) would pay for it otherwise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    atomic_write_bytes(path, buf.getvalue())


def fit_ylim(fits: list[dict], task: str, oracle: dict | None) -> tuple[float, float]:
    """A task's y-range: its measured points, fitted P0s and the generator's reference, with a margin. A P0 interval
    that runs to its bound (1.0 for a flat fit) would otherwise stretch the axis and flatten the points into a line;
    the fit table gives the whole interval."""
    ys = [float(v) for f in fits if f["task"] == task for v in f["p"]]
    ys += [f["fit"].p0 for f in fits if f["task"] == task and f["fit"] is not None]
    if oracle and task in oracle:
        ys.append(float(oracle[task]["mrr"]))
    ys = [y for y in ys if math.isfinite(y)]
    if not ys:
        return 0.0, 1.0
    lo, hi = min(ys), max(ys)
    pad = max(hi - lo, 0.01) * 0.15
    return max(lo - pad, 0.0), hi + pad


def plot_fits(analysis: dict, path: Path, oracle: dict | None) -> bool:
    tasks = list(analysis["tasks"])
    fits = analysis["fits"]
    if not any(len(f["n"]) for f in fits):
        return False
    plt = _plt()
    cols = min(len(tasks), 2)
    rows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 4.2 * rows), squeeze=False)
    lengths = sorted({f["max_seq_len"] for f in fits})
    colors = {L: plt.cm.viridis(i / max(len(lengths) - 1, 1) * 0.85) for i, L in enumerate(lengths)}
    for ax, task in zip(axes.flat, tasks):
        all_n = np.concatenate([f["n"] for f in fits if f["task"] == task] or [np.zeros(0)])
        if all_n.size == 0:
            ax.set_visible(False)
            continue
        grid = np.geomspace(all_n.min() / 1.5, all_n.max() * 1.5, 200)
        for f in (f for f in fits if f["task"] == task):
            c = colors[f["max_seq_len"]]
            ax.scatter(f["n"], f["p"], color=c, s=18, alpha=0.75, label=f"len {f['max_seq_len']}")
            fit = f["fit"]
            if fit is not None:
                ax.plot(grid, fit.predict(grid), color=c, lw=1.6)
                ax.axhline(fit.p0, color=c, lw=0.9, ls="--")
                boot = f["boot"]
                if boot and math.isfinite(boot["p0"].low):
                    ax.axhspan(boot["p0"].low, min(boot["p0"].high, 1.0), color=c, alpha=0.08)
            if f["loglinear"] is not None:
                ax.plot(grid, f["loglinear"].predict(grid), color=c, lw=0.9, ls=":")
        if oracle and task in oracle:
            ax.axhline(oracle[task]["mrr"], color="black", lw=1.0, ls="-.", label="generator reference")
        ax.set_ylim(*fit_ylim(fits, task, oracle))
        ax.set_xscale("log")
        ax.set_xlabel("backbone parameters")
        ax.set_ylabel("MRR")
        desc = analysis["tasks"][task].get("description") or ""
        ax.set_title(f"task {task}" + (f": {desc}" if desc else ""), fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[len(tasks):]:
        ax.set_visible(False)
    fig.suptitle("P(N) = P0 - (N/N0)^-a per task (solid), P0 and its 95% interval (dashed, band), "
                 "log-linear (dotted)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    _save(fig, path)
    return True


def plot_stability(analysis: dict, path: Path) -> bool:
    stability = analysis["stability"]
    cells = [c for c in stability["cells"] if c["retrains"] > 1]
    if not cells:
        return False
    plt = _plt()
    primary = analysis["primary"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, key, label in ((axes[0], "topk_overlap", f"top-{stability['k']} overlap between retrains (same requests)"),
                           (axes[1], f"mrr_{primary}_std", f"std of MRR (task {primary}) across retrains")):
        x = [c["train_flops"] for c in cells]
        y = [c[key] for c in cells]
        sc = ax.scatter(x, y, c=[math.log10(c["backbone_params"]) for c in cells], cmap="viridis", s=40)
        for c, xi, yi in zip(cells, x, y):
            ax.annotate(f"{c['preset']}/{c['max_seq_len']}", (xi, yi), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        corr = stability["correlations"].get(("train_flops", key))
        title = label
        if corr:
            title += f"\nSpearman rho {corr['rho']:+.2f} [{corr['interval'].low:+.2f}, {corr['interval'].high:+.2f}]"
        ax.set_title(title, fontsize=9)
        ax.set_xscale("log")
        ax.set_xlabel("training FLOPs per retrain")
        ax.grid(alpha=0.3)
        fig.colorbar(sc, ax=ax, label="log10 backbone parameters")
    _save(fig, path)
    return True


def plot_gains(analysis: dict, path: Path) -> bool:
    gains = analysis["gains"]
    rows = [r for r in gains.get("rows", []) if math.isfinite(r["gain_vs_next"]) and math.isfinite(r["headroom_small"])]
    if not rows:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.2, 4.2))
    ax.scatter([r["headroom_small"] for r in rows], [r["gain_vs_next"] for r in rows], s=40)
    for r in rows:
        ax.annotate(r["task"], (r["headroom_small"], r["gain_vs_next"]), xytext=(4, 3), textcoords="offset points")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel(f"headroom P0 - P(N) at the smallest backbone ({_params(gains['small'])})")
    ax.set_ylabel("task MRR gain / next-event MRR gain")
    ax.set_title(f"gain {_params(gains['small'])} -> {_params(gains['large'])} (max_seq_len {gains['max_seq_len']})",
                 fontsize=10)
    ax.grid(alpha=0.3)
    _save(fig, path)
    return True


def plot_curves(curves: list[dict], primary: str, path: Path) -> bool:
    if not curves:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    sizes = sorted({c["n"] for c in curves})
    for c in curves:
        color = plt.cm.viridis(sizes.index(c["n"]) / max(len(sizes) - 1, 1) * 0.85)
        style = "-" if c["max_seq_len"] == max(x["max_seq_len"] for x in curves) else "--"
        label = f"{c['preset']}/len {c['max_seq_len']}"
        axes[0].plot(c["epochs"], c["loss"], style, color=color, label=label)
        axes[1].plot(c["epochs"], c["mrr"], style, color=color, label=label)
    axes[0].set_ylabel("training loss")
    axes[1].set_ylabel(f"MRR (task {primary})")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    _save(fig, path)
    return True


# --------------------------------------------------------------------------------------------------- text

MIN_CELLS = 5  # below this many (size, length) cells a rank correlation is not read as an answer
# Below this many scored requests a task's MRR moves by more than its differences between sizes (one request is 1/n
# of the mean): its fits are shown but flagged.
MIN_REQUESTS = 30

def answers(analysis: dict) -> list[str]:
    """The two open questions, answered in words from this sweep's numbers (never fixed text)."""
    out = []
    stability = analysis["stability"]
    corr = stability["correlations"].get(("train_flops", "topk_overlap"))
    corr_std = stability["correlations"].get(("train_flops", f"mrr_{analysis['primary']}_std"))
    n_cells = sum(c["retrains"] > 1 for c in stability["cells"])
    if corr:
        lo, hi = corr["interval"].low, corr["interval"].high
        settled = corr["n"] >= MIN_CELLS and corr["p"] < 0.05 and (lo > 0 or hi < 0)
        verdict = (("more expensive retrains serve more stable top lists" if lo > 0 else
                    "more expensive retrains serve less stable top lists") if settled else
                   f"the sweep cannot tell (it needs {MIN_CELLS}+ cells, p < 0.05 and an interval clear of 0)")
        needed = pairs_for_clear_interval(corr["rho"])
        if not settled:
            if needed:
                verdict += (f"; a correlation of this size needs about {max(needed, MIN_CELLS)} cells for a 95% "
                            "interval clear of zero (Fisher's z)")
            elif corr["rho"] == 0:
                verdict += "; with rho 0 no number of cells would separate it from zero"
        text = (f"**Does repeated-training cost track score stability?** Across {n_cells} (size, max_seq_len) cells "
                f"with several retrains, Spearman's rho between training FLOPs per retrain and the "
                f"top-{stability['k']} "
                f"overlap of retrains is {corr['rho']:+.2f} (95% bootstrap interval {lo:+.2f} to {hi:+.2f}, "
                f"permutation p = {corr['p']:.3f}, n = {corr['n']}): {verdict}.")
        if corr_std:
            text += (f" Against the spread of task {analysis['primary']}'s MRR across retrains: "
                     f"rho {corr_std['rho']:+.2f} "
                     f"({corr_std['interval'].low:+.2f} to {corr_std['interval'].high:+.2f}, p = {corr_std['p']:.3f}).")
        out.append(text)
    else:
        out.append("**Does repeated-training cost track score stability?** Not answered: it needs three or more "
                   "(size, max_seq_len) cells with two or more retrains each (tune.seeds, tune.window_shifts_h).")
    if warm := warm_sentence(analysis):
        out.append(warm)
    if ends := ends_sentence(analysis):
        out.append(ends)
    gains = analysis["gains"]
    title = "**How much do pre-training gains shrink on tasks with little headroom?**"
    if not gains.get("rows"):
        out.append(f"{title} Not answered: it needs two or more backbone sizes.")
        return out
    loss, nxt = gains["loss_gain"], gains["next_gain"]
    over = gains.get("retrains", 0)
    basis = ("training windows, read on the validation requests they share"
             if gains.get("basis") == "training windows" else "seeds")
    head = (f"{title} From {_params(gains['small'])} to {_params(gains['large'])} "
            f"(max_seq_len {gains['max_seq_len']}; " +
            (f"mean of at least {over} retrains a size: {basis}), " if over > 1 else "one retrain a size), ") +
            f"pre-training loss {'improves' if loss > 0 else 'gets worse'} by {abs(loss):.1%} and next-event MRR "
            f"(task {gains['primary']}) {'rises' if nxt > 0 else 'falls'} by {abs(nxt):.0%}")
    if not (math.isfinite(nxt) and nxt > 0):
        parts = ", ".join(f"{r['task']} {r['gain']:+.0%}" for r in gains["rows"] if math.isfinite(r["gain"]))
        out.append(f"{head}; per task: {parts}. Not answered: the larger backbone did not gain in pre-training, so "
                   "there is no pre-training gain for the tasks' gains to shrink from (train longer, or on more "
                   "data, until size helps next-event MRR).")
        return out
    noise = gains.get("next_gain_noise", math.nan)
    if math.isfinite(noise) and nxt <= noise:
        parts = ", ".join(f"{r['task']} {r['gain']:+.0%}" for r in gains["rows"] if math.isfinite(r["gain"]))
        more = retrains_for_gain(nxt, noise, over)
        out.append(f"{head}; per task: {parts}. Not answered: the next-event gain is within the retrains' noise "
                   f"(two standard errors over the retrains: {noise:.0%}), so the tasks' shares of it are noise too"
                   + (f"; a gain of this size would stand above that noise with about {more} retrains per size "
                      "(tune.seeds)." if more else "."))
        return out
    rows = [r for r in gains["rows"] if math.isfinite(r["gain_vs_next"])]
    parts = ", ".join(f"{r['task']} {r['gain']:+.0%} (x{r['gain_vs_next']:.2f} of next-event, headroom "
                      f"{_fmt(r['headroom_small'])})" for r in rows)
    noted = (f", above the retrains' noise ({noise:.0%}, two standard errors)" if math.isfinite(noise) else
             " (no noise to hold it against: it needs two or more retrains a size with the figure; tune.seeds)")
    text = f"{head}{noted}; per task: {parts}."
    h = [(r["headroom_small"], r["gain_vs_next"]) for r in rows if math.isfinite(r["headroom_small"])]
    if len(h) >= 3:
        rho = spearman(*zip(*h))
        text += (f" Across the {len(h)} tasks, Spearman's rho between headroom and the gain ratio is {rho:+.2f} "
                 "(few tasks: a direction, not a test; and headroom comes from a fit to the same runs, so part of "
                 "the relation is built in).")
    out.append(text)
    return out


def ends_sentence(analysis: dict) -> str | None:
    """Whether the sizes were trained to convergence: how each size's retrains from scratch ended and how many epochs
    they trained; where the time budget stopped every retrain, or the largest size more often than the smallest,
    that the fits compare sizes at equal training time, not at their validation best; and where runs hit
    train.epochs. None when no run recorded how it ended."""
    rows = [r for r in analysis.get("ends") or [] if set(r["ends"]) - {"not recorded"}]
    if not rows:
        return None
    order = (EARLY_STOPPING, TIME_BUDGET, MAX_EPOCHS, "not recorded")

    def counted(r):
        ends = ", ".join(f"{r['ends'][k]} {k}"
                         for k in sorted(r["ends"], key=lambda k: (order.index(k) if k in order else 9, k)))
        epochs = r.get("epochs") or []
        span = (f"{epochs[0]}" if epochs[0] == epochs[-1] else f"{epochs[0]}-{epochs[-1]}") if epochs else ""
        return ends + (f" ({span} epochs)" if span else "")

    def name(r):
        return f"{r['preset']} ({_params(r['backbone_params'])})"

    def cut(r):  # retrains the time budget stopped
        return r["ends"].get(TIME_BUDGET, 0)

    parts = "; ".join(f"{name(r)}: {counted(r)}" for r in rows)
    seconds = analysis.get("time_budget_s")
    budget = f" (train.time_budget_s {seconds:g} s)" if seconds else ""
    text = f"**Were the sizes trained to convergence?** How each size's retrains from scratch ended: {parts}."
    small, large = rows[0], rows[-1]
    fewer = (len(rows) > 1 and small.get("epochs") and large.get("epochs")
             and float(np.median(large["epochs"])) < float(np.median(small["epochs"])))
    if all(cut(r) == r["retrains"] for r in rows):
        text += (f" Every retrain stopped on its time budget{budget}, the smallest size's too, none by early "
                 "stopping: the fits compare sizes at equal training time, not at their validation best"
                 + (f", and {large['preset']} trained fewer epochs in it than {small['preset']}" if fewer else "")
                 + "; they say what size buys in that time (a longer budget, or faster hardware, would tell more).")
    elif len(rows) > 1 and cut(large) / large["retrains"] > cut(small) / small["retrains"]:
        text += (f" {name(large)} stopped on its time budget{budget} in {cut(large)} of {large['retrains']} retrains, "
                 f"{name(small)} in {cut(small)} of {small['retrains']}: the fits and gains compare the sizes at "
                 "equal training time, not at their validation best, and may understate what size buys (a longer "
                 "budget, or faster hardware, would tell).")
    capped = sum(r["ends"].get(MAX_EPOCHS, 0) for r in rows)
    if capped:
        text += (f" {capped} retrain{'s' if capped > 1 else ''} stopped at train.epochs, still improving or not: "
                 "raise it so that early stopping ends them.")
    elif all(set(r["ends"]) == {EARLY_STOPPING} for r in rows):
        text += " Every one stopped by early stopping: the sizes are compared at their validation best."
    return text


def fit_table(analysis: dict, oracle: dict | None) -> Table:
    cols = (["task", "max_seq_len", "points", "sizes", "P0", "P0 95% interval", "N0", "a", "RMSE offset law",
             "RMSE log-linear"] + (["generator reference MRR"] if oracle else []) + ["notes"])
    rows = []
    for f in analysis["fits"]:
        fit, boot, ll = f["fit"], f["boot"], f["loglinear"]
        row = [f["task"], f["max_seq_len"], f["points"], f["sizes"]]
        if fit is None:
            row += ["", "", "", "", "", ll.rmse if ll else None]
        else:
            interval = (f"[{_fmt(boot['p0'].low)}, {_fmt(boot['p0'].high)}]" if math.isfinite(boot["p0"].low)
                        else "none")
            row += [fit.p0, interval, "-" if fit.flat else _params(fit.n0), "-" if fit.flat else fit.a, fit.rmse,
                    ll.rmse if ll else None]
        if oracle:
            row.append(oracle.get(f["task"], {}).get("mrr"))
        notes = ["needs 3+ sizes"] if fit is None else list(fit.warnings)
        n = analysis.get("requests", {}).get(f["task"])
        if n is not None and n < MIN_REQUESTS:
            notes.insert(0, f"only {n} requests: too few to read")
        if f.get("basis") == "training windows":
            notes.insert(0, "one seed: every window's retrain, on the shared requests")
        row.append("; ".join(notes))
        rows.append(row)
    return Table(cols, rows)


def headroom_table(analysis: dict) -> Table:
    cols = ["task", "max_seq_len", "backbone", "measured MRR", "fitted P(N)", "headroom P0 - P(N)"]
    rows = [[f["task"], f["max_seq_len"], _params(s["n"]), s["measured"], s["predicted"], s["headroom"]]
            for f in analysis["fits"] if f["fit"] is not None for s in f["per_size"]]
    return Table(cols, rows)


def stability_table(analysis: dict) -> Table:
    return cells_table(analysis, analysis["stability"]["cells"])


def cells_table(analysis: dict, cells: list[dict], kind: bool = False) -> Table:
    """Retrains per (size, length) cell (genrec.study.retrains_summary), with their kind (warm or from scratch)."""
    tasks = list(analysis["tasks"])
    cols = (["preset", "backbone", "max_seq_len"] + (["retrain"] if kind else [])
            + ["retrains", "train FLOPs", "wall s", "events", f"top-{analysis['stability']['k']} overlap"]
            + [f"MRR {t} mean ± std" for t in tasks])
    if kind:  # a warm-started retrain may keep the weights it started from: its cost is then the whole run's
        cols[cols.index("events") + 1:cols.index("events") + 1] = ["run FLOPs", "run wall s", "kept its start"]
    rows = [[c["preset"], _params(c["backbone_params"]), c["max_seq_len"]] + ([c["retrain"]] if kind else [])
            + [c["retrains"], c["train_flops"], c["wall_time_s"], c["events_processed"]]
            + ([c.get("run_train_flops"), c.get("run_wall_time_s"), c.get("kept_start")] if kind else [])
            + [c["topk_overlap"]]
            + [f"{_fmt(c[f'mrr_{t}_mean'])} ± {_fmt(c[f'mrr_{t}_std'])}" for t in tasks] for c in cells]
    return Table(cols, rows)


def warm_table(analysis: dict) -> Table | None:
    """Warm-started retrains beside the ones from scratch on the same windows (tune.warm_start); None without any."""
    warm = analysis["stability"].get("warm") or []
    return cells_table(analysis, warm, kind=True) if warm else None


def warm_sentence(analysis: dict) -> str | None:
    """What warm starts change, in words from the sweep's numbers: cost per retrain and stability against retrains
    from scratch on the same windows."""
    warm = analysis["stability"].get("warm") or []
    pairs = [(a, b) for a, b in zip(warm[::2], warm[1::2]) if a["retrains"] and b["retrains"]]
    if not pairs:
        return None
    primary, k = analysis["primary"], analysis["stability"]["k"]
    # The whole runs' cost (patience included): a warm retrain that kept its start cost its epochs all the same.
    ratio = [b["run_train_flops"] / a["run_train_flops"] for a, b in pairs
             if np.isfinite(a["run_train_flops"]) and a["run_train_flops"] > 0 and np.isfinite(b["run_train_flops"])]
    kept = sum(b.get("kept_start", 0) for _, b in pairs)
    overlap = [(a["topk_overlap"], b["topk_overlap"]) for a, b in pairs
               if np.isfinite(a["topk_overlap"]) and np.isfinite(b["topk_overlap"])]
    mrr = [(a[f"mrr_{primary}_mean"], b[f"mrr_{primary}_mean"]) for a, b in pairs]
    text = (f"**Warm-started retrains** ({len(pairs)} (size, max_seq_len) cells, each retrain starting from the "
            "previous window's and training on the hours since, beside retrains from scratch on the same windows): ")
    parts = []
    if ratio:
        parts.append(f"a whole warm run costs {np.mean(ratio):.2f}x the training FLOPs of one from scratch (mean over "
                     f"cells, {min(ratio):.2f}-{max(ratio):.2f}; the patience epochs included)")
    parts.append(f"{kept} of {sum(b['retrains'] for _, b in pairs)} kept the weights they started from (no epoch "
                 "beat them on validation)")
    if overlap:
        parts.append(f"their top-{k} lists overlap {np.mean([b for _, b in overlap]):.2f} between retrains against "
                     f"{np.mean([a for a, _ in overlap]):.2f} from scratch")
    parts.append(f"task {primary}'s MRR {np.mean([b for _, b in mrr]):.4f} against {np.mean([a for a, _ in mrr]):.4f}")
    return text + "; ".join(parts) + "."


def correlation_table(analysis: dict) -> Table:
    rows = [[cost, stab, c["n"], c["rho"], f"[{_fmt(c['interval'].low)}, {_fmt(c['interval'].high)}]", c["p"]]
            for (cost, stab), c in analysis["stability"]["correlations"].items()]
    return Table(["cost", "stability", "cells", "Spearman rho", "95% bootstrap interval", "permutation p"], rows)


def gains_table(analysis: dict) -> Table:
    rows = [[r["task"], r["mrr_small"], r["mrr_large"], r["gain"], r.get("noise", math.nan), r.get("beyond_noise"),
             r["gain_vs_next"], r["gain_vs_loss"], r["p0"], r["headroom_small"], r["relative_headroom_small"]]
            for r in analysis["gains"].get("rows", [])]
    return Table(["task", "MRR smallest", "MRR largest", "relative gain", "retrain noise (2 SE)", "gain beyond it",
                  "gain / next-event gain", "gain / loss gain", "P0", "headroom at smallest", "headroom / P0"], rows)


def optimal_table(analysis: dict) -> Table:
    optimal = analysis["optimal"]
    rows = [[r["key"], _params(r["n"]) + (" (clipped to the sizes measured)" if r["clipped"] else ""),
             r["cost"], r["affordable"], r["predicted"]] for r in optimal.get("rows", [])]
    return Table(["max_seq_len", "largest affordable backbone", "predicted train FLOPs", "within budget",
                  f"predicted MRR (task {optimal.get('task', '')})"], rows)


def trials_table(analysis: dict) -> Table:
    tasks = list(analysis["tasks"])
    # the figure trials were kept by, which popularity stands beside
    select = next((k for r in analysis["trials"] for k in r if k.startswith("popularity_")),
                  "popularity_").removeprefix("popularity_")
    cols = (["preset", "backbone", "max_seq_len", "seed", "window shift h", "status", "ended", "kept epoch", "loss"]
            + ([f"{select} (validation)", "popularity, same requests"] if select else [])
            + [f"validation MRR {t}" for t in tasks] + ["wall s", "events", "train FLOPs"])
    rows = []
    for r in analysis["trials"]:
        rows.append([r["preset"], _params(r["backbone_params"]) if r["backbone_params"] else "", r["max_seq_len"],
                     r["seed"], f"{r['window_shift_h']:g}" + (" (warm)" if r.get("warm") else ""),
                     r["status"] + (f": {r['error']}" if r.get("error") else ""), r.get("end") or "",
                     r["epochs"], r["loss"]]
                    + ([r.get(select), r.get("popularity_" + select)] if select else [])
                    + [r.get(f"valid_mrr_{t}") for t in tasks]
                    + [r["wall_time_s"], r["events_processed"], r["train_flops"]])
    return Table(cols, rows)


def task_table(analysis: dict) -> Table:
    rows = []
    for name, t in analysis["tasks"].items():
        target = {"next": "first title after the request not in the context",
                  "horizon": f"titles {t['start_h']:g}-{t['end_h']:g} h after the request, after the next "
                             f"{t['skip']} events",
                  "cold": "first title with no training event"}[t["targets"]]
        cand = ("whole catalogue" if t["candidates"] == "all" else
                f"top {t['pool_size']} titles of the {t['window_days']:g} days before, launched by the request")
        rows.append([name, t.get("description", ""), target, cand, analysis.get("requests", {}).get(name)])
    return Table(["task", "description", "targets", "candidates", "requests scored"], rows)


# --------------------------------------------------------------------------------------------------- page

def _jsonable(x):
    if isinstance(x, dict):
        return {(k if isinstance(k, str) else " / ".join(map(str, k)) if isinstance(k, tuple) else str(k)):
                _jsonable(v) for k, v in x.items() if k not in ("p0_samples",)}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (PowerLawFit, LogLinearFit, Interval, CostModel)):
        return {k: _jsonable(v) for k, v in x.__dict__.items()}
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def cost_line(cost: dict) -> str:
    """The report's sentence on what one run of the sweep cost (genrec.study.sweep_cost)."""
    n, warm, bad = cost["trials"], cost.get("warm", 0), cost.get("unfinished", 0)
    parts = [f"{n} trials" + (f" ({n - warm} from scratch, {warm} warm-started)" if warm else "")
             + (f", {bad} of them failed or stopped" if bad else "")]
    wall, busy = cost.get("wall_s", math.nan), cost.get("trial_s", math.nan)
    if math.isfinite(wall) and wall > 0:
        parts.append(f"trials running for {wall / 3600:.2f} h of wall time, {busy / 3600:.2f} trial-hours in all "
                     f"({busy / wall:.1f} at a time on average)")
    train = cost.get("train_s", math.nan)
    if math.isfinite(train):
        parts.append(f"{train / 3600:.2f} h in the training loops (epochs with their validation)")
    if math.isfinite(cost.get("train_flops", math.nan)):
        parts.append(f"{_fmt(cost['train_flops'])} training FLOPs")
    return ("**Cost of this run:** " + "; ".join(parts) + " (every epoch run, the patience epochs included; not "
            "counted: the data step before the trials, the report and serving after them, and any time between a "
            "stop and `--resume`)")


def write_report(analysis: dict, out_dir: str | Path, meta: dict, oracle: dict | None = None,
                 curves: list[dict] | None = None) -> dict[str, Path]:
    """Write report.html, report.md, the PNG plots and analysis.json into out_dir; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = {}
    for name, fn in (("fits", lambda p: plot_fits(analysis, p, oracle)),
                     ("stability", lambda p: plot_stability(analysis, p)),
                     ("gains", lambda p: plot_gains(analysis, p)),
                     ("curves", lambda p: plot_curves(curves or [], analysis["primary"], p))):
        path = out / f"{name}.png"
        if fn(path):
            plots[name] = path
        elif path.exists():
            path.unlink()  # a stale plot from an earlier report of the same folder would mislead

    optimal = analysis["optimal"]
    sections = [
        ("Tasks", [task_table(analysis)], None),
        ("Answers", [], "\n\n".join(answers(analysis))),
        ("Scaling fits per task", [fit_table(analysis, oracle), headroom_table(analysis)], "fits"),
        ("Repeated-training cost vs score stability",
         [t for t in (stability_table(analysis), correlation_table(analysis), warm_table(analysis)) if t is not None],
         "stability"),
        ("Pre-training gain vs downstream gain", [gains_table(analysis)], "gains"),
        ("Compute-optimal pick", [optimal_table(analysis)],
         (f"Budget: {_fmt(optimal['budget_flops'])} training FLOPs per retrain ({optimal['budget_source']}; "
          f"`--budget-flops` sets it). " +
          (f"Best measured cell within it: {optimal['grid_best']['preset']} / "
           f"max_seq_len {optimal['grid_best']['max_seq_len']} "
           f"(MRR {_fmt(optimal['grid_best']['mrr'])} at {_fmt(optimal['grid_best']['cost'])} FLOPs). "
           if optimal.get("grid_best") else "No measured cell fits the budget. ") +
          "The fits' pick: for each max_seq_len the largest backbone the budget buys (log-log cost model per length) "
          "and the metric its fit predicts there.") if optimal else "No trial reported training FLOPs."),
        ("Training curves", [], "curves"),
        ("Every trial", [trials_table(analysis)], None),
    ]
    intro = [f"**Results:** `{meta.get('experiment', '')}`",
             f"**Data:** {meta.get('dataset', '')} ({meta.get('counts', '')})",
             f"**Sweep:** {meta.get('grid', '')}",
             "**Split:** every figure is from the **validation** split, at the epoch each run keeps (its highest "
             f"{meta.get('select', 'validation figure')}); costs are what a run spent up to that epoch. "
             + ("A retrain on a shifted training window keeps its epoch by the validation window just after its "
                "own; retrains are compared (stability, warm against from scratch) on the validation requests they "
                "all share. " if meta.get("moving_validation") else "")
             + "The test split is read once, for the sweep's winner (its manifest), never for a choice made here.",
             f"**Made by:** `{meta.get('command', '')}` on {meta.get('date', '')}"]
    if analysis.get("cost", {}).get("trials"):
        intro.append(cost_line(analysis["cost"]))
    if oracle:
        intro.append("**Generator reference:** on synthetic data each task is also scored by the generator's own "
                     "probabilities (same requests and candidates): exact Bayes-optimal ranking for the next event, "
                     "an approximate one for the horizon and cold-start tasks; how predictable the data make each "
                     "task.")
    elif meta.get("oracle_error"):
        intro.append(f"**Generator reference:** not computed ({meta['oracle_error']})")

    md = [f"# genrec sweep report: {meta.get('name', '')}", "", *[f"- {line}" for line in intro], ""]
    page = [f"<h1>genrec sweep report: {html.escape(str(meta.get('name', '')))}</h1><ul>"]
    page += [f"<li>{_md_inline(line)}</li>" for line in intro] + ["</ul>"]
    for title, tables, extra in sections:
        md += [f"## {title}", ""]
        page.append(f"<h2>{html.escape(title)}</h2>")
        if extra in plots:
            md += [f"![{extra}]({plots[extra].name})", ""]
            data = base64.b64encode(plots[extra].read_bytes()).decode()
            page.append(f'<img alt="{extra}" src="data:image/png;base64,{data}">')
        elif extra and extra not in ("fits", "stability", "gains", "curves"):
            md += [extra, ""]
            page += [f"<p>{_md_inline(p)}</p>" for p in extra.split("\n\n")]
        elif extra:
            md += ["(no plot: too few trials for it)", ""]
            page.append("<p>(no plot: too few trials for it)</p>")
        for t in tables:
            md += [t.markdown(), ""]
            page.append(t.html())
    style = ("body{font-family:system-ui,sans-serif;max-width:1250px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:0.8em 0;font-size:13px}td,th{border:1px solid #ccc;"
             "padding:3px 7px;text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
             "img{max-width:100%;border:1px solid #eee}code{background:#f5f5f5;padding:1px 4px}")
    doc = (f"<!doctype html><html><head><meta charset='utf-8'><title>genrec report {html.escape(str(meta.get('name')))}"
           f"</title><style>{style}</style></head><body>{''.join(page)}</body></html>")
    paths = {"html": out / "report.html", "md": out / "report.md", "json": out / "analysis.json", **plots}
    atomic_write_bytes(paths["html"], doc.encode())
    atomic_write_bytes(paths["md"], "\n".join(md).encode())
    figures = _jsonable({"meta": meta, "oracle": oracle, **analysis})
    atomic_write_bytes(paths["json"], json.dumps(figures, indent=1).encode())
    return paths


def _md_inline(text: str) -> str:
    """**bold** and `code` of our own sentences, escaped."""
    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)
