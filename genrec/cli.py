"""`genrec` command line: one typed config, every step of the pipeline.

    genrec presets                       size presets with their exact backbone parameter counts
    genrec flops --layers 6 --width 1024 --seq-len 512 --items 1000000
                                         training FLOPs per token: full vs sampled vs sampled + projected head
    genrec data prepare --config C       load the configured data and write time-split Parquet shards
    genrec data download NAME --dest D   fetch a MovieLens archive (needs network)
    genrec train --config C              pre-train one model (same as python -m trainers.pretrain)
    genrec sweep --config C              Ray Tune over max_seq_len x preset, writes the winner manifest
    genrec report [RESULTS_DIR]          scaling fits, retrain cost vs stability, gains vs headroom (HTML + PNG)
    genrec finetune --config C           continue a pre-trained checkpoint on a task (same as python -m trainers.finetune)
    genrec serve --config C              serve the winner with Ray Serve on the configured host:port
    genrec serve --config C --update     roll the running app over to the current winner manifest
    genrec pipeline --config C           data, sweep, report, serve: end to end, and one real HTTP answer
    genrec cluster render C OUT_DIR      `ray up` file, KubeRay RayJobs and RayService, Serve config, from one config
    genrec config explain [KEY]          every config key (or one section or key): type, default, bounds, meaning
    genrec config show --config C        the config after --set overrides and validation, as YAML (no serve token)
    genrec recommend --config C --out D  top-k lists for every user (or --users FILE) as Parquet, via Ray Data
    genrec export CHECKPOINT OUT         a checkpoint as safetensors weights + JSON spec + model card (converts old ones)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from genrec.cluster import write as write_cluster_files
from genrec.config import ConfigError, dump_config, load_config, without_secrets
from genrec.config_docs import format_docs, select
from genrec.console import keep_log, print_table, say
from genrec.entrypoint import add_config_args, add_resume_arg, add_run_args, add_verbose_arg, run_command
from genrec.flops import comparison
from genrec.presets import PRESET_TARGETS, PRESETS
from genrec.ray_session import init_ray
from genrec.storage import is_uri
from genrec.winner import WinnerError, read_winner

# The rule for imports here: what reaches torch, Ray or pyarrow's compute layer (the model, training, tuning, serving,
# the data loaders and shards, the sweep study) is imported inside the command that needs it, so that `genrec --help`,
# a mistyped flag and the light commands (presets, flops, config) do not wait for those libraries to load.


def cmd_presets(args) -> int:
    from genrec.model import backbone_params

    rows = [{"preset": name, "layers": L, "width": d, "heads": h, "head_dim": d // h,
             "backbone_params": f"{backbone_params(L, d):,}",
             "vs_name": f"{backbone_params(L, d) / PRESET_TARGETS[name] - 1:+.1%}"}
            for name, (L, d, h) in PRESETS.items()]
    print_table(rows, ["preset", "layers", "width", "heads", "head_dim", "backbone_params", "vs_name"])
    print("\nbackbone = transformer blocks + final norm (12 d^2 + 2d per block, + d); embeddings and decoding excluded")
    return 0


def cmd_flops(args) -> int:
    rows = comparison(args.layers, args.width, args.seq_len, args.items, args.negatives_fraction,
                      args.projection_ratio, args.convention)
    print(f"training FLOPs per token: {args.layers} layers, width {args.width}, sequence length {args.seq_len}, "
          f"{args.items:,} titles ({args.convention} convention)")
    print_table([{"decoding": r["decoding"], "backbone": f"{r['backbone']:.3g}",
                  "decoding_flops": f"{r['decoding_flops']:.3g}", "total": f"{r['total']:.3g}",
                  "saving_vs_full": f"{r['vs_full']:.1f}x"} for r in rows],
                ["decoding", "backbone", "decoding_flops", "total", "saving_vs_full"])
    print("\nassumptions: 6 FLOPs per multiply-add per token (forward 2 + backward 4); elementwise work ignored; see "
          "genrec/flops.py.\n'paper' = the arXiv 2605.23312 illustration (2x MLP, 12 FLOPs per scored title-dim); "
          "'genrec' = genrec's own blocks (4x MLP, 6 per scored title-dim).")
    return 0


def _request_time(text: str) -> int:
    from genrec.offline import request_time

    try:
        return request_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be a positive integer")
    return value


def cmd_prepare(args) -> int:
    from genrec.preparation import prepare_shards

    cfg = load_config(args.config, args.overrides)
    keep_log(cfg.storage.store(), "logs", f"prepare-{time.strftime('%Y%m%d-%H%M%S')}.log")
    shards = prepare_shards(cfg, rebuild=args.rebuild)
    say(json.dumps(shards.manifest["counts"], indent=2))
    return 0


def cmd_download(args) -> int:
    from genrec.data.loaders import download_movielens

    print(download_movielens(args.name, args.dest))
    return 0


def cmd_train(args) -> int:
    from trainers.pretrain import run

    run(load_config(args.config, args.overrides), args.name, args.rebuild_shards, resume=args.resume)
    return 0


def cmd_finetune(args) -> int:
    from trainers.finetune import run

    run(load_config(args.config, args.overrides), args.name, args.rebuild_shards, resume=args.resume)
    return 0


def cmd_sweep(args) -> int:
    from tuning.sweep import run

    run(load_config(args.config, args.overrides), args.name, args.rebuild_shards, resume=args.resume)
    return 0


def cmd_report(args) -> int:
    from genrec.study import make_report
    from tuning.sweep import latest_experiment

    results, store = args.results_dir, None
    if results is None or args.config or args.overrides:
        cfg = load_config(args.config, args.overrides)
        store = cfg.storage.store()
        results = results or latest_experiment(cfg)
    make_report(results, args.out, args.budget_flops, args.bootstrap, command="genrec " + " ".join(sys.argv[1:]),
                store=store)
    return 0


def cmd_cluster_render(args) -> int:
    cfg = load_config(args.config, args.overrides)
    # The config as the cluster's jobs see it: a path relative to the working dir they are started in (an absolute
    # path of this machine means nothing on the cluster).
    as_path = args.as_path or args.config
    if Path(as_path).is_absolute() and not args.as_path:
        raise ConfigError(f"{args.config}: give the config relative to the repository root (e.g. cluster/genrec.yaml), "
                          "or name its path on the cluster with --as-path")
    paths = write_cluster_files(cfg, as_path, args.out_dir)
    print_table([{"file": str(p), "use": p.read_text().splitlines()[1].split("Use: ", 1)[-1]} for p in paths],
                ["file", "use"])
    return 0


def print_listing(text: str) -> None:
    """Print a long listing, which a reader such as `head` may stop reading before its end."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # Python would report the closed pipe again when it flushes stdout at exit: point stdout at devnull first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def cmd_config_explain(args) -> int:
    print_listing(format_docs(select(args.key)))
    return 0


def cmd_config_show(args) -> int:
    cfg = load_config(args.config, args.overrides)
    if cfg.serve.token is not None:
        # Said, so that a copy of this output used as a config is not taken to carry the token.
        print("# serve.token is set but not shown (it never leaves the process that serves)")
    print_listing(dump_config(without_secrets(cfg)).rstrip("\n"))
    return 0


def cmd_export(args) -> int:
    from genrec.checkpoint import load_checkpoint, local_checkpoint
    from genrec.export import export_checkpoint, selected_record

    cfg = load_config(args.config, args.overrides)
    store = cfg.storage.store()
    located = store.locate(args.checkpoint)
    loaded = load_checkpoint(local_checkpoint(cfg, args.checkpoint),
                             allow_unverified=cfg.storage.allow_unverified_checkpoints)
    source = "/".join(located.rstrip("/").rsplit("/", 2)[-2:])  # RUN/checkpoint_...
    out = export_checkpoint(loaded, Path(args.out), source, selected_record(store, located, cfg.winner_path()))
    print(f"exported {store.uri(located)} -> {out} (safetensors weights, spec, items, checksums, the run's config "
          "and MODEL_CARD.md)")
    return 0


def cmd_recommend(args) -> int:
    import ray

    from genrec.offline import (ListSpec, last_timestamp, read_users, recommend_all, training_end,
                                user_contexts)
    from genrec.preparation import load_dataset, prepare_shards

    cfg = load_config(args.config, args.overrides)
    store = cfg.storage.store()
    keep_log(store, "logs", f"recommend-{time.strftime('%Y%m%d-%H%M%S')}.log")
    remote_out = is_uri(args.out)
    out = Path(args.out)
    if not remote_out and out.exists():
        raise ConfigError(f"--out {out}: already exists; name a new folder (the lists are written as Parquet files "
                          "in it)")
    checkpoint = args.checkpoint
    if checkpoint is None:
        try:
            checkpoint = read_winner(store, cfg.winner_path()).checkpoint
        except WinnerError as exc:
            raise ConfigError(f"{exc}; run `genrec sweep` first, or pass --checkpoint FOLDER") from None
    quiet = (lambda *_: None) if args.quiet else say
    events = load_dataset(cfg, quiet).events
    at = args.at if args.at is not None else last_timestamp(events)
    until, leave_one_out = None, False
    if args.context == "training":  # the events the model trained on: where its shards end training
        leave_one_out = cfg.data.split == "leave_one_out"
        until = training_end(cfg.data.split, prepare_shards(cfg, echo=quiet).manifest["counts"])
    contexts = user_contexts(events, at, until, read_users(args.users) if args.users else None, leave_one_out)
    spec = ListSpec(k=args.k, at=at, exclude_seen=not args.include_seen, genres=tuple(args.genres or ()),
                    launched_after=args.launched_after, launched_before=args.launched_before)
    init_ray(cfg)
    nodes = sum(n["Alive"] for n in ray.nodes())
    if nodes > 1 and not remote_out:
        raise ConfigError(f"--out {out}: a local folder, but the lists are written by tasks on {nodes} nodes; give "
                          "a URI every node can write (s3://bucket/lists)")
    started = time.perf_counter()
    if remote_out:  # an object store has no rename: the files appear as Ray Data writes them
        fs, path = pafs.FileSystem.from_uri(args.out)
        n = recommend_all(contexts, cfg, store.locate(checkpoint), spec, path, args.actors, args.cpus_per_actor, fs)
    else:
        partial = out.with_name(f".{out.name}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        n = recommend_all(contexts, cfg, store.locate(checkpoint), spec, str(partial.resolve()), args.actors,
                          args.cpus_per_actor)
        partial.rename(out)  # whole or absent: an interrupted run leaves only the .partial folder
    elapsed = time.perf_counter() - started
    say(f"top-{args.k} lists of {n:,} users ({args.context} context up to {at}, request time {at}) by "
        f"{checkpoint} -> {args.out} ({n / max(elapsed, 1e-9):,.0f} users/s with {args.actors} actor(s))")
    return 0


def deploy(cfg, checkpoint: str | None = None) -> None:
    """Deploy (or update) the genrec app on the Serve instance of the connected Ray. On a running app only the
    models map changes (the deployment's user_config): replicas switch in place, no request is dropped."""
    from ray import serve

    from serving.app import build

    serve.run(build(cfg, checkpoint), name="genrec", route_prefix="/", blocking=False)


def start_serve(cfg, checkpoint: str | None = None):
    """Start Serve on the configured host/port and deploy the winner; returns the base URL."""
    from ray import serve

    init_ray(cfg)
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    deploy(cfg, checkpoint)
    return f"http://{cfg.serve.host}:{cfg.serve.port}"


def cmd_serve(args) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.update:
        import ray

        from serving.app import served_models

        keep_log(cfg.storage.store(), "logs", f"serve-update-{time.strftime('%Y%m%d-%H%M%S')}.log")
        # The running app's Ray: the one `genrec serve` started on this machine, or RAY_ADDRESS / --address.
        try:
            ray.init(address=args.address or "auto", log_to_driver=False)
        except ConnectionError as exc:
            raise ConfigError(f"serve --update: no running Ray to update ({exc.args[0].split('.')[0]}); start the "
                              "app with `genrec serve --config C` first, or pass --address (or RAY_ADDRESS)") from None
        deploy(cfg, args.checkpoint)
        models = served_models(cfg, args.checkpoint)
        say(f"rolled out: winner -> {models['winner']} ({len(models)} models served)")
        return 0
    keep_log(cfg.storage.store(), "logs", f"serve-{time.strftime('%Y%m%d-%H%M%S')}.log")
    url = start_serve(cfg, args.checkpoint)
    say(f"serving at {url} (POST /recommend, GET /healthz, /docs); Ctrl-C stops")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        from ray import serve

        serve.shutdown()
    return 0


def post_json(url: str, body: dict, timeout: float = 30.0, token: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            return e.code, json.loads(body or b"{}")
        except ValueError:  # a proxy's or server's plain-text error page
            return e.code, {"detail": body.decode(errors="replace")}


def sample_history(cfg, n: int = 8) -> list[dict]:
    """The most recent events of the first evaluation user, as a client would send them."""
    from genrec.shards import open_shards

    shards = open_shards(cfg.shards_dir(), cfg.storage.store())
    row = pq.read_table(shards.files("eval")[0], columns=["items", "ts"], filesystem=shards.fs).slice(0, 1).to_pylist()[0]
    vocab = pq.read_table(shards.items_path, columns=["item_id", "index"], filesystem=shards.fs)
    id_of = dict(zip(vocab.column("index").to_pylist(), vocab.column("item_id").to_pylist()))
    return [{"item_id": id_of[i], "timestamp": t} for i, t in zip(row["items"][-n:], row["ts"][-n:])]


def cmd_pipeline(args) -> int:
    from ray import serve

    from genrec.preparation import prepare_shards
    from genrec.study import make_report
    from tuning.sweep import run as sweep

    t0 = time.perf_counter()
    data = [f"data.source={args.source}", f"data.path={args.data}"] if args.data else []
    cfg = load_config(args.config, data + args.overrides)
    say(f"== 1/5 data: {cfg.data.source}")
    prepare_shards(cfg, rebuild=args.rebuild_shards)
    say("== 2/5 sweep (Ray Tune -> Ray Train + DeepSpeed over Ray Data)")
    manifest = sweep(cfg, resume=args.resume)
    say("== 3/5 report (scaling fits, retrain cost vs stability, gains vs headroom)")
    make_report(manifest.experiment, args.report_dir, command="genrec " + " ".join(sys.argv[1:]),
                store=cfg.storage.store())
    say("== 4/5 serve the winner (Ray Serve)")
    url = start_serve(cfg)
    history = sample_history(cfg)
    body = {"history": history, "k": 5}
    status, answer = post_json(f"{url}/recommend", body)
    say(f"POST {url}/recommend (the last {len(history)} events of an evaluation user, k 5) -> {status}")
    for rank, item in enumerate(answer.get("items", []), 1):
        say(f"  {rank}. {item['title'][:60]:<60} {item['score']:8.3f}  (item {item['item_id']})")
    if status != 200:
        say(f"  {json.dumps(answer)[:300]}")
    bad_status, bad = post_json(f"{url}/recommend", {"history": [], "k": 5})
    say(f"an invalid request (empty history) -> {bad_status}: {json.dumps(bad)[:160]}")
    example = json.dumps({"history": history[-2:], "k": 5})
    serve_cmd = "genrec serve" + (f" --config {args.config}" if args.config else "")
    say(f"to try it: `{serve_cmd}` (serves until Ctrl-C), then curl -s {url}/recommend -H 'Content-Type: "
        f"application/json' -d '{example}'")
    serve.shutdown()
    say(f"== 5/5 done in {time.perf_counter() - t0:.0f} s")
    return 0 if status == 200 else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="genrec", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    # In the order `genrec --help` lists the commands.
    for add in (add_model_shape_commands, add_data_commands, add_training_commands, add_serve_command,
                add_cluster_commands, add_config_commands, add_model_output_commands, add_pipeline_command):
        add(sub)
    return p


def add_model_shape_commands(sub) -> None:
    """`genrec presets` and `genrec flops`: what a model shape costs, no config needed."""
    s = sub.add_parser("presets", help="list size presets and exact backbone parameter counts")
    s.set_defaults(fn=cmd_presets)

    s = sub.add_parser("flops", help="training FLOPs per token for a model shape and catalogue size")
    s.add_argument("--layers", type=_positive_int, required=True)
    s.add_argument("--width", type=_positive_int, required=True)
    s.add_argument("--seq-len", type=_positive_int, required=True)
    s.add_argument("--items", type=_positive_int, required=True, help="catalogue size (titles)")
    s.add_argument("--negatives-fraction", type=float, default=0.01, help="sampled negatives / catalogue (0.01)")
    s.add_argument("--projection-ratio", type=_positive_int, default=8, help="decoding head d -> d/r (8)")
    s.add_argument("--convention", choices=["paper", "genrec"], default="paper",
                   help="paper: the paper's illustration; genrec: genrec's own blocks (default: paper)")
    s.set_defaults(fn=cmd_flops)


def add_data_commands(sub) -> None:
    """`genrec data prepare` and `genrec data download`."""
    data = sub.add_parser("data", help="prepare shards or download data").add_subparsers(dest="data_cmd", required=True)
    s = data.add_parser("prepare", help="load the configured data and write Parquet shards")
    add_config_args(s)
    s.add_argument("--rebuild", action="store_true", help="rebuild even if identical shards exist")
    add_verbose_arg(s)
    s.set_defaults(fn=cmd_prepare)
    s = data.add_parser("download", help="download a MovieLens archive (needs network)")
    s.add_argument("name", help="ml-latest-small, ml-100k, ml-1m, ml-10m, ml-25m or ml-latest")
    s.add_argument("--dest", default="data", help="folder to extract into (default: data)")
    s.set_defaults(fn=cmd_download)


def add_training_commands(sub) -> None:
    """`genrec train`, `finetune` and `sweep` (the Ray Train and Tune entrypoints), and `genrec report` of a sweep."""
    for name, fn, helptext in (("train", cmd_train, "pre-train one model"),
                               ("finetune", cmd_finetune, "continue a pre-trained checkpoint on one task"),
                               ("sweep", cmd_sweep, "Ray Tune sweep; writes the winner manifest")):
        s = sub.add_parser(name, help=helptext)
        add_run_args(s)
        add_resume_arg(s, "SWEEP" if name == "sweep" else "RUN")
        s.set_defaults(fn=fn)

    s = sub.add_parser("report", help="scaling fits, cost vs stability, gains vs headroom: HTML + PNG report",
                       description="Analyse a sweep's Tune results (storage.root/tune/<sweep>) and write report.html "
                                   "(self-contained), report.md and PNG plots.")
    s.add_argument("results_dir", nargs="?", default=None,
                   help="the sweep's results folder (default: the newest sweep under the config's storage)")
    add_config_args(s)
    s.add_argument("--out", default=None, help="folder for the report (default: RESULTS_DIR/report)")
    s.add_argument("--budget-flops", type=float, default=None,
                   help="training FLOPs of one retrain for the compute-optimal pick (default: report.budget_flops, "
                        "else the median measured)")
    s.add_argument("--bootstrap", type=_positive_int, default=None, help="bootstrap resamples per fit")
    s.set_defaults(fn=cmd_report)


def add_serve_command(sub) -> None:
    """`genrec serve`, and its `--update` of a running app."""
    s = sub.add_parser("serve", help="serve the winner checkpoint with Ray Serve")
    add_config_args(s)
    s.add_argument("--checkpoint", default=None, help="serve this checkpoint folder instead of the winner")
    s.add_argument("--update", action="store_true",
                   help="roll the app running on this Ray (started by `genrec serve`) over to the current winner "
                        "manifest, in place, while it keeps answering")
    add_verbose_arg(s)
    s.add_argument("--address", default=None, help="with --update: the Ray address (default: RAY_ADDRESS or the "
                   "local cluster)")
    s.set_defaults(fn=cmd_serve)


def add_cluster_commands(sub) -> None:
    """`genrec cluster render`."""
    cluster = sub.add_parser("cluster", help="cluster files rendered from the config").add_subparsers(
        dest="cluster_cmd", required=True)
    s = cluster.add_parser(
        "render", help="write the ray up file, KubeRay RayJobs and RayService, and the Serve config",
        description="Render every cluster file from one config (its `cluster:` section, training resources and "
                    "Serve deployment): ray-cluster.yaml (ray up), runtime-env.yaml (ray job submit), "
                    "rayjob-pretrain.yaml and rayjob-sweep.yaml (KubeRay RayJob), serve-config.yaml (serve deploy) "
                    "and rayservice.yaml (KubeRay RayService). Targets Ray 2.60 and KubeRay v1 CRDs.")
    s.add_argument("config", help="the deployment YAML, e.g. cluster/genrec.yaml")
    s.add_argument("out_dir", help="folder for the rendered files, e.g. cluster/rendered")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config field (repeatable)")
    s.add_argument("--as-path", default=None,
                   help="the config's path as the cluster's jobs see it (default: CONFIG as given, which should be "
                        "relative to the repository root)")
    s.set_defaults(fn=cmd_cluster_render)


def add_config_commands(sub) -> None:
    """`genrec config explain` and `genrec config show`."""
    config = sub.add_parser("config", help="explain the config's keys, or show a config as commands resolve it"
                            ).add_subparsers(dest="config_cmd", required=True)
    s = config.add_parser(
        "explain", help="every config key with its type, default, bounds and description",
        description="Print the config schema's keys (genrec/config.py): for each, `key: type = default  [bounds]` "
                    "and its description. configs/local.yaml's comments are these descriptions' first sentences.")
    s.add_argument("key", nargs="?", default=None,
                   help="a section (train), or a dotted key (train.lr, eval.tasks.B.targets): it and the keys under "
                        "it (default: every key)")
    s.set_defaults(fn=cmd_config_explain)
    s = config.add_parser(
        "show", help="the resolved config (after --set overrides and validation) as YAML",
        description="Print the config every command would run with: CONFIG (or the built-in defaults) with the "
                    "--set overrides applied, validated, every default filled in and paths resolved, as YAML. "
                    "serve.token is never printed (shown as null): the output is safe to paste.")
    add_config_args(s)
    s.set_defaults(fn=cmd_config_show)


def add_model_output_commands(sub) -> None:
    """`genrec recommend` and `genrec export`: what a trained checkpoint gives outside Serve."""
    s = sub.add_parser(
        "recommend", help="top-k lists for every user (or the given ones) as Parquet, through Ray Data",
        description="Offline candidate generation: rank every user of the configured data (or those of --users) "
                    "at the request time --at with the winner's checkpoint (or --checkpoint), by the Serve app's own "
                    "ranker (same windows, title age at the request time, history excluded, same filters). Each "
                    "user's context is every event at or before --at (--context all), or only the events the model "
                    "trained on (--context training). Users travel through Ray Data; an actor pool holds the "
                    "checkpoint. Output: Parquet files under --out with user_id, request_ts, context_events, "
                    "item_ids and scores (an empty list for a user none of whose titles the model knows).")
    add_config_args(s)
    s.add_argument("--out", required=True, help="a new folder for the Parquet lists, or a URI (s3://...; needed on "
                   "a cluster of several nodes, where every node writes)")
    s.add_argument("--users", default=None, help="a file of user ids: one per line, or a Parquet file with a "
                   "user_id column (default: every user)")
    s.add_argument("--k", type=_positive_int, default=100, help="titles per user (default: 100)")
    s.add_argument("--checkpoint", default=None, help="rank with this checkpoint instead of the winner's")
    s.add_argument("--at", type=_request_time, default=None,
                   help="request time: Unix seconds or an ISO 8601 date/time, UTC (default: the data's last event)")
    s.add_argument("--context", choices=["all", "training"], default="all",
                   help="each user's context: every event up to --at (all), or only the events the model trained "
                        "on (training)")
    s.add_argument("--include-seen", action="store_true", help="keep the context's titles in the lists")
    s.add_argument("--genres", nargs="+", default=None, help="only titles with at least one of these genres")
    s.add_argument("--launched-after", type=int, default=None, help="only titles launched at or after (Unix s)")
    s.add_argument("--launched-before", type=int, default=None, help="only titles launched before (Unix s)")
    s.add_argument("--actors", type=_positive_int, default=1, help="Ray Data actors ranking in parallel")
    s.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs (and torch threads) per actor")
    s.add_argument("--quiet", action="store_true", help="print only the summary line")
    add_verbose_arg(s)
    s.set_defaults(fn=cmd_recommend)

    s = sub.add_parser(
        "export", help="a checkpoint as safetensors weights, a JSON spec and a model card, in a new folder",
        description="Write CHECKPOINT (a checkpoint folder, or its path or URI in a URI storage.root) to the new "
                    "folder OUT in the current checkpoint format: model.safetensors (loadable with safetensors "
                    "alone, nothing unpickled), model.json (the spec), items.parquet, checksums.json, the run's "
                    "config.yaml and MODEL_CARD.md (data, split, validation figures, the test figures when it is "
                    "its run's selected checkpoint, the command that retrains it, the commit). A checkpoint of an "
                    "older format (torch-pickled model.pt) is converted.")
    s.add_argument("checkpoint", help="the checkpoint folder, e.g. genrec-runs/runs/RUN/checkpoint_...")
    s.add_argument("out", help="a folder to create for the export (refused when it exists)")
    add_config_args(s)
    s.set_defaults(fn=cmd_export)


def add_pipeline_command(sub) -> None:
    """`genrec pipeline`: data to an answered request, end to end."""
    s = sub.add_parser("pipeline", help="data -> shards -> sweep -> winner -> serve, end to end")
    add_config_args(s)
    s.add_argument("--data", default=None, help="a data folder or file instead of the synthetic default")
    s.add_argument("--source", default="movielens",
                   choices=["movielens", "recbole", "sequences", "amazon", "parquet", "csv"],
                   help="layout of --data (default: movielens)")
    s.add_argument("--rebuild-shards", action="store_true")
    s.add_argument("--report-dir", default=None, help="where the report goes (default: the sweep's folder/report)")
    add_resume_arg(s)
    add_verbose_arg(s)
    s.set_defaults(fn=cmd_pipeline)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(lambda: args.fn(args), args)


if __name__ == "__main__":
    sys.exit(main())
