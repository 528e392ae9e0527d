"""genrec's full path against a plain PyTorch loop, on the same model and cores, side by side in one invocation.

    .venv/bin/python benchmarks/overhead.py --data data/ml-100k --source recbole [--epochs 4] [--set KEY=VALUE ...]
    .venv/bin/python benchmarks/overhead.py --synthetic-items 24000 --set model.decoding=sampled   # a larger catalogue
    .venv/bin/python benchmarks/overhead.py --synthetic-items 400 --zero-stages 0 1 3 --set train.workers=2

Both train the same model (genrec.build: the config's preset, objective, decoding and features) on the same
leave-one-out shards and windows for the same epochs:

* plain: genrec.reference_loop, one process, windows in memory, torch AdamW, `--threads` threads;
* full: genrec's trainer (shards -> Ray Data -> Ray Train -> DeepSpeed at the config's ZeRO stage, its workers and
  threads), on an embedded local Ray; with `--zero-stages 0 1 3`, once per ZeRO stage (the same run otherwise), to
  show what each stage costs the model on these cores (on CPU the workers talk over gloo; on GPUs, NCCL, the ratios
  differ and must be measured there).

Both run with genrec.ray_session.WORKER_ENV in their environment (this process sets it before torch is imported, as a
local Ray's workers get it), so they allocate alike (PyTorch's huge pages); the JSON records each path's OpenMP wait
policy (OMP_WAIT_POLICY, unset: OpenMP's default). genrec's worker tells glibc's malloc to keep what a step frees
(genrec.allocator: Ray Train steps in a thread, whose arena glibc would unmap and trim within every step); the plain
loop steps in its main thread with glibc's defaults, as a plain PyTorch script does. Each genrec epoch records which
(GENREC_KEEP_FREED_MEMORY=0 in this process's environment leaves glibc's defaults in the worker too, for an A/B). The
figure is training events per second (target events over the seconds spent in optimizer steps, input waits included
for the full path): epoch 1 is left out of both (start-up, first-touch), so neither evaluation nor start-up is
counted. The full path's whole wall time (Ray start, shard check, evaluation, checkpoints) is reported beside it, and
each path's CPU milliseconds per training event: the CPU time (every thread, user and system) of the process that
trains (the plain loop's; genrec's worker's) over the same steps. That one leaves out what other processes take from
the training threads and so moves less with the machine's load than events/s do: a steadier check of a change to what
the worker itself does.
`--synthetic-items N` trains on the seeded synthetic generator with N titles instead (3,000 users, 50 events each),
to show how the step's cost follows the catalogue: only as much as the decoding mode scores. `--rounds N` alternates
the two N times in the one invocation and pools them, for a ratio that one short run per path cannot hold (the
machine's speed drifts between runs); the rounds take turns at which path goes first, so that a drift over the
invocation does not tilt every round's ratio the same way (an even N balances the two orders; an odd one leaves one
more round with the plain loop first). `--plain-in-worker` adds a third path to each round: the plain loop itself
inside a one-worker Ray Train run (Ray's worker process, its training thread and Ray's processes around it, but the
windows in memory, no Ray Data and no DeepSpeed), which tells what the place the loop runs in costs from what
genrec's own loop costs. It always runs after genrec's path, in the same Ray session: it is not alternated with it.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import ray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genrec.ray_helpers import helpers_state  # noqa: E402
from genrec.ray_session import init_ray, set_worker_env  # noqa: E402

# The plain loop runs in this process: it gets the environment genrec's workers get (PyTorch's huge-page setting
# among it), before anything imports torch (below), so that both paths allocate alike.
set_worker_env()
PLAIN_OMP_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY")  # read by this process's OpenMP when torch loads it

import ray.train  # noqa: E402 (imports torch)
from ray.train.torch import TorchConfig, TorchTrainer  # noqa: E402

from benchmarks._harness import parser, write  # noqa: E402
from genrec.config import load_config, without_secrets  # noqa: E402
from genrec.defaults import resolve as resolve_defaults  # noqa: E402
from genrec.reference_loop import train_reference  # noqa: E402
from genrec.preparation import prepare_shards  # noqa: E402
from genrec.engine import zero_stage  # noqa: E402
from genrec.runs import read_history  # noqa: E402
from genrec.shards import open_shards  # noqa: E402
from genrec.train import fit  # noqa: E402


IN_WORKER = "plain loop inside a Ray Train worker (no Ray Data, no DeepSpeed)"


def plain_in_worker(cfg, shards_root: str, epochs: int, threads: int) -> list[dict]:
    """The plain loop's history, trained where it is called: genrec.reference_loop with its windows in memory, no Ray
    Data and no DeepSpeed (in_train_worker runs it as Ray Train runs a training function)."""
    shards = open_shards(shards_root, cfg.storage.store())
    return train_reference(cfg, shards, epochs=epochs, threads=threads, validate=False).history


def in_train_worker(fn, cpus: float, storage: str, **kwargs):
    """fn(**kwargs)'s result (JSON-able), fn run as the training function of a one-worker Ray Train run with `cpus`
    CPUs on the Ray this process joined: in a thread of a Ray worker process, Ray's processes beside it, a one-rank
    gloo group, where genrec's trainer runs its loop. The run's record goes under `storage`."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        TorchTrainer(write_result, train_loop_config={"fn": fn, "kwargs": kwargs, "out": str(out)},
                     torch_config=TorchConfig(backend="gloo"),
                     scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": cpus}),
                     run_config=ray.train.RunConfig(name=f"in-worker-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
                                                    storage_path=storage)).fit()
        return json.loads(out.read_text())


def write_result(config: dict) -> None:
    """in_train_worker's training function: the function's result to the file the caller reads."""
    Path(config["out"]).write_text(json.dumps(config["fn"](**config["kwargs"])))


def rate(history: list[dict]) -> tuple[float, float]:
    """(training events/s, seconds) over epochs 2.. of a history of either path."""
    later = history[1:] or history
    seconds = sum(h.get("train_s", h.get("epoch_time_s")) for h in later)
    events = sum(h["events"] if "events" in h else h["events_per_s"] * h["epoch_time_s"] for h in later)
    return events / seconds, seconds


def pooled(histories: list[list[dict]]) -> dict:
    """Training events/s of one path over several runs (epochs 2.. of each): their events over their seconds."""
    rates = [rate(h) for h in histories]
    seconds = sum(sec for _, sec in rates)
    # The median epoch too: one epoch slowed by something else on the machine moves the pooled figure, not this one.
    epochs = [rate([e])[0] for h in histories for e in (h[1:] or h)]
    out = {"events_per_s": sum(eps * sec for eps, sec in rates) / seconds, "train_s": seconds,
           "median_epoch_events_per_s": float(statistics.median(epochs))}
    later = [e for h in histories for e in (h[1:] or h)]
    if all(e.get("cpu_s") is not None for e in later):  # histories from before the CPU time was recorded have none
        out["cpu_ms_per_event"] = 1e3 * sum(e["cpu_s"] for e in later) / (out["events_per_s"] * seconds)
    return out


def table(results: dict) -> str:
    """The Markdown table of a stored run: each path's training events/s, and its share of the plain loop's."""
    rows = results["rows"]
    cpu = all("cpu_ms_per_event" in r for r in rows)  # a column only for runs that recorded the CPU time
    out = ["| path | training events/s | vs the plain loop | last epoch's loss | input wait | whole run |"
           + (" CPU ms per event (the training process) |" if cpu else ""),
           "|---|---|---|---|---|---|" + ("---|" if cpu else "")]
    for r in rows:
        wait = f"{r['input_wait_share']:.1%}" if "input_wait_share" in r else ""
        wall = f"{r['wall_s']:.0f} s" if "wall_s" in r else ""
        share = r.get("vs_plain", r["events_per_s"] / rows[0]["events_per_s"])
        out.append(f"| {r['path']} | {r['events_per_s']:,.0f} | {share:.1%} | {r['loss_last']:.4f} | {wait} | {wall} |"
                   + (f" {r['cpu_ms_per_event']:.3f} |" if cpu else ""))
    model = results.get("config", {}).get("model", {})
    titles = f"{results['titles']:,} titles, " if "titles" in results else ""
    first = f", {rows[1]['path'].split(', ')[-1]}" if len(rows) > 2 else ""
    decoding = results.get("decoding", model.get("decoding"))
    out.append(f"\ngenrec / plain: **{results['ratio']:.1%}**{first} ({titles}{decoding} decoding, "
               f"epochs 2-{results['epochs']}, training time only)")
    if results.get("rounds"):
        each = ", ".join(f"{r['ratio']:.1%}" for r in results["rounds"])
        # rounds recorded which path went first since they take turns; before, the plain loop always did
        turns = any(r.get("first") == "genrec" for r in results["rounds"])
        order = "plain, genrec; genrec, plain; ..." if turns else "plain, genrec, plain, ..."
        out[-1] += f"; {len(results['rounds'])} alternated rounds ({order}), pooled; each round: {each}"
        if all("in_worker_ratio" in r for r in results["rounds"]):
            out[-1] += "; the plain loop inside a Ray Train worker, each round: " + ", ".join(
                f"{r['in_worker_ratio']:.1%}" for r in results["rounds"])
        if "median_epoch_events_per_s" in rows[1]:
            median = rows[1]["median_epoch_events_per_s"] / rows[0]["median_epoch_events_per_s"]
            out[-1] += f"; median epoch against median epoch: {median:.1%}"
    if "ray_helpers" in results:  # recorded since they run under SCHED_IDLE by default
        out[-1] += f"; Ray's idle helper processes: {results['ray_helpers']}"
    # recorded in genrec's epochs since its worker sets glibc's malloc (genrec.allocator)
    malloc = sorted({h["malloc"] for key, runs in results.get("histories", {}).items() if key.startswith("zero")
                     for h in runs if "malloc" in h})
    if malloc:
        out[-1] += f"; glibc's malloc in genrec's worker: {'/'.join(malloc)}"
    return "\n".join(out)


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--data", default=None, help="a MovieLens folder, or RecBole atomic files with --source recbole")
    p.add_argument("--synthetic-items", type=int, default=None, help="the synthetic generator with this many titles")
    p.add_argument("--source", default="movielens", choices=["movielens", "recbole"])
    p.add_argument("--config", default="configs/local.yaml")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--threads", type=int, default=2, help="threads of the plain loop (default: every core here)")
    p.add_argument("--storage", default="benchmarks/work/overhead")
    p.add_argument("--zero-stages", type=int, nargs="+", default=None, choices=[0, 1, 2, 3], metavar="STAGE",
                   help="run the full path once per DeepSpeed ZeRO stage (default: once, at train.zero_stage)")
    p.add_argument("--rounds", type=int, default=1,
                   help="alternate the plain loop and the full path this many times (see --order; Ray stopped "
                        "during each plain loop); events/s pooled over the rounds, each round's ratio beside it")
    p.add_argument("--order", choices=["turns", "plain-first"], default="turns",
                   help="with --rounds: the rounds take turns at which path goes first (turns: plain then genrec, "
                        "genrec then plain, ...), or the plain loop always goes first (plain-first: the order of "
                        "every result stored before 268b782)")
    p.add_argument("--plain-in-worker", action="store_true",
                   help="also run the plain loop inside a one-worker Ray Train run (after the full path in each "
                        "round): Ray's worker, thread and processes around it, but no Ray Data and no DeepSpeed; it "
                        "tells the cost of where the loop runs from the cost of what genrec's loop does")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args(argv)
    if (args.data is None) == (args.synthetic_items is None):
        p.error("give --data or --synthetic-items")
    data = ([f"data.source={args.source}", f"data.path={args.data}", f"name=overhead-{args.source}"] if args.data else
            ["data.source=synthetic", f"data.synthetic.items={args.synthetic_items}", "data.synthetic.users=3000",
             "data.synthetic.events_per_user=50", f"name=overhead-synthetic-{args.synthetic_items}"])
    base = [*data, "data.split=leave_one_out", f"storage.root={args.storage}", "tracking.wandb=disabled",
            f"train.epochs={args.epochs}", "train.patience=null", "train.time_budget_s=null", *args.overrides]
    if args.rounds > 1 and args.zero_stages and len(args.zero_stages) > 1:
        p.error("--rounds alternates one plain loop with one full path: give at most one --zero-stages")
    cfg = load_config(args.config, base)
    shards = prepare_shards(cfg)
    cfg = resolve_defaults(cfg, shards)
    # per round: {"first": "plain" or "genrec", "plain": history, full-path label: (history, wall seconds, config)}
    rounds = []

    def plain_loop(tag: str) -> list[dict]:
        print(f"{tag}plain loop: {args.epochs} epochs, {args.threads} threads ...", flush=True)
        return train_reference(cfg, shards, epochs=args.epochs, threads=args.threads, validate=False).history

    for k in range(args.rounds):
        tag = f"round {k + 1}/{args.rounds}: " if args.rounds > 1 else ""
        # Rounds take turns at going first (plain then genrec, genrec then plain, ...): the machine's speed drifts
        # over minutes, and a fixed order would give every round's ratio the same tilt.
        plain_first = k % 2 == 0 or args.order == "plain-first"
        done = {"first": "plain" if plain_first else "genrec"}
        if plain_first:
            done["plain"] = plain_loop(tag)
        init_ray(cfg)
        for stage in args.zero_stages or [None]:
            staged = [*base, f"train.zero_stage={stage}"]
            run_cfg = cfg if stage is None else resolve_defaults(load_config(args.config, staged), shards)
            label = f"genrec (Ray Data + Ray Train + DeepSpeed), ZeRO-{zero_stage(run_cfg)}"
            print(f"{tag}{label}: {run_cfg.train.workers} worker(s) x {run_cfg.train.torch_threads} threads ...",
                  flush=True)
            name = f"overhead-{time.strftime('%Y%m%d-%H%M%S')}"
            t0 = time.perf_counter()
            fit(run_cfg, shards, name)
            wall = time.perf_counter() - t0
            done[label] = (read_history(run_cfg, name), wall, run_cfg)
        if args.plain_in_worker:
            print(f"{tag}plain loop inside a Ray Train worker: {args.threads} threads ...", flush=True)
            done[IN_WORKER] = in_train_worker(plain_in_worker, cfg.train.cpus_per_worker,
                                              cfg.storage.store().path("runs"), cfg=cfg, shards_root=str(shards.root),
                                              epochs=args.epochs, threads=args.threads)
        # Ray's own processes (raylet, dashboard, controllers) are the full path's cost, not the plain loop's: each
        # round's plain loop runs with Ray stopped, as the first one does.
        ray.shutdown()
        if not plain_first:
            done["plain"] = plain_loop(tag)
        rounds.append(done)
    rows = [{"path": "plain loop (one process)", **pooled([r["plain"] for r in rounds]),
             "loss_last": rounds[-1]["plain"][-1]["loss"]}]
    for label in [k for k in rounds[0] if k not in ("first", "plain", IN_WORKER)]:
        fulls = [r[label][0] for r in rounds]
        later = [h for full in fulls for h in (full[1:] or full)]
        run_cfg = rounds[0][label][2]
        rows.append({"path": label, "zero_stage": zero_stage(run_cfg), "workers": run_cfg.train.workers,
                     **pooled(fulls), "loss_last": fulls[-1][-1]["loss"],
                     "wall_s": sum(r[label][1] for r in rounds) / len(rounds),
                     "input_wait_share": sum(h["input_wait_s"] for h in later) / sum(h["epoch_time_s"] for h in later)})
    if args.plain_in_worker:
        rows.append({"path": IN_WORKER, **pooled([r[IN_WORKER] for r in rounds]),
                     "loss_last": rounds[-1][IN_WORKER][-1]["loss"]})
    for r in rows:
        r["vs_plain"] = r["events_per_s"] / rows[0]["events_per_s"]
    # Every run's history: "plain", "zero0" (and "in-worker") for the first round, "plain1", "zero0-1" ("in-worker1"),
    # ... for the later ones.
    histories = {}
    for k, done in enumerate(rounds):
        histories[f"plain{k}" if k else "plain"] = done["plain"]
        if IN_WORKER in done:
            histories[f"in-worker{k}" if k else "in-worker"] = done[IN_WORKER]
        for full, _, run_cfg in (v for key, v in done.items() if key not in ("first", "plain", IN_WORKER)):
            histories[f"zero{zero_stage(run_cfg)}-{k}" if k else f"zero{zero_stage(run_cfg)}"] = full
    # "ratio" and "full_history" are the first full-path run's (the config's own stage unless --zero-stages).
    first_label = rows[1]["path"]
    results = {"rows": rows, "ratio": rows[1]["vs_plain"], "epochs": args.epochs, "threads_plain": args.threads,
               "titles": shards.num_items, "decoding": cfg.model.decoding,
               "omp_wait_policy": {"plain": PLAIN_OMP_WAIT_POLICY, "genrec": os.environ.get("OMP_WAIT_POLICY")},
               # Ray's idle helper processes beside genrec's worker (genrec.ray_helpers)
               "ray_helpers": helpers_state(),
               "config": without_secrets(cfg).model_dump(mode="json"),
               "plain_history": rounds[0]["plain"], "full_history": rounds[0][first_label][0],
               "histories": histories}
    if args.rounds > 1:
        per_round = [(rate(r["plain"])[0], rate(r[first_label][0])[0]) for r in rounds]
        results["rounds"] = [{"plain_events_per_s": plain, "events_per_s": full, "ratio": full / plain,
                              "first": r["first"]} for (plain, full), r in zip(per_round, rounds)]
        for r, got in zip(results["rounds"], rounds):
            if IN_WORKER in got:
                r["in_worker_ratio"] = rate(got[IN_WORKER])[0] / r["plain_events_per_s"]
    print(table(results))
    write("overhead", results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
