"""genrec vs RecBole's SASRec on ML-100K, leave-one-out, full ranking, same machine, one run.

    .venv/bin/python benchmarks/vs_recbole.py [--genrec-epochs 20] [--recbole-epochs 1] [--set KEY=VALUE ...]

Both systems read RecBole's own ML-100K copy (shipped in the recbole wheel, in RecBole's venv: see recbole_peer.py)
and use the same protocol: per user, the last event is the test target, the second-to-last validation, everything
before trains; every title not in the user's history is ranked. genrec runs its real pipeline (Parquet shards ->
Ray Data -> Ray Train + DeepSpeed ZeRO-3, 2 workers on this CPU box); RecBole runs SASRec with its defaults and CE
loss. genrec reports the test metrics of its last epoch (no model selection); RecBole reports test metrics of its
best-validation epoch. Wall times are each system's training + evaluation time, without install. genrec reports the
test figures of its kept epoch (chosen on validation, test read once: runs/<run>/selected.json). Superseded by
benchmarks/leaderboard.py, which runs a plain SASRec beside genrec in one process.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

GENREC_DEFAULTS = [
    "name=ml100k-loo", "data.source=recbole", "data.split=leave_one_out", "model.max_seq_len=50",
    "model.decoding=full", "model.dropout=0.2", "train.batch_size=32", "tracking.wandb=disabled",
]


def recbole_dataset(py: Path) -> Path:
    code = "import recbole, os; print(os.path.join(recbole.__path__[0], 'dataset_example', 'ml-100k'))"
    return Path(subprocess.run([str(py), "-c", code], check=True, capture_output=True, text=True).stdout.strip())


def run_genrec(data_path: Path, epochs: int, overrides: list[str], storage: Path) -> dict:
    from genrec.config import load_config
    from trainers.pretrain import run
    from genrec.runs import read_history

    cfg = load_config(ROOT / "configs" / "local.yaml", [
        *GENREC_DEFAULTS, f"data.path={data_path}", f"storage.root={storage}", f"train.epochs={epochs}", *overrides])
    name = f"vs-recbole-{time.strftime('%Y%m%d-%H%M%S')}"
    t0 = time.perf_counter()
    run(cfg, name)
    wall = time.perf_counter() - t0
    history = read_history(cfg, name)
    store = cfg.storage.store()
    test = json.loads(store.read_text(store.path("runs", name, "selected.json")))["test"]
    last = history[-1]
    return {"system": "genrec", "model": f"{cfg.model.preset} (decoding {cfg.model.decoding}, "
            f"projection 1/{cfg.model.projection_ratio}, semantic {cfg.model.semantic}, mtp_k {cfg.model.mtp_k})",
            "epochs": len(history), "wall_s": wall, "train_eval_s": last["wall_time_s"],
            "events_per_s": sum(h["events_per_s"] for h in history) / len(history),
            "hr@10": test["hr@10"], "ndcg@10": test["ndcg@10"], "mrr@10": test["mrr@10"], "mrr": test["mrr"],
            "history": history, "config": cfg.model_dump(mode="json")}


def run_recbole(epochs: int, threads: int, out: Path) -> dict:
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "recbole_peer.py"), "--epochs", str(epochs),
                    "--threads", str(threads), "--out", str(out)], check=True)
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--genrec-epochs", type=int, default=20)
    p.add_argument("--recbole-epochs", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="RecBole's torch threads (genrec: 2 workers x 1 thread)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="genrec config override (repeatable)")
    p.add_argument("--skip-recbole", action="store_true", help="genrec only (e.g. while tuning)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "vs_recbole.json")
    args = p.parse_args(argv)

    from recbole_peer import ensure_venv

    py = ensure_venv()
    data = recbole_dataset(py)
    storage = ROOT / "benchmarks" / "work" / "vs-recbole"
    results = [run_genrec(data, args.genrec_epochs, args.overrides, storage)]
    if not args.skip_recbole:
        rb = run_recbole(args.recbole_epochs, args.threads, storage / "recbole.json")
        results.append({"system": "RecBole SASRec", "model": "SASRec defaults (2 layers, hidden 64), CE",
                        "epochs": rb.get("epochs"), "wall_s": rb.get("wall_s"), "train_eval_s": rb.get("wall_s"),
                        "events_per_s": rb.get("samples_per_s"), "hr@10": rb.get("test_hr@10"),
                        "ndcg@10": rb.get("test_ndcg@10"), "mrr@10": rb.get("test_mrr@10"), "mrr": None, "raw": rb})

    cols = ["system", "epochs", "wall_s", "events_per_s", "hr@10", "ndcg@10", "mrr@10", "mrr"]
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in results:
        cells = [r.get(c) for c in cols]
        print("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) and v < 10 else
                                f"{v:,.0f}" if isinstance(v, float) else str(v) for v in cells) + " |")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                                    "argv": sys.argv, "results": results}, indent=2, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
