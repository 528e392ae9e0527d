"""Real Ray Data -> Ray Train (DeepSpeed ZeRO-3 on CPU, gloo) -> Ray Tune -> Ray Serve over HTTP on 127.0.0.1."""

import json
import urllib.request

import pyarrow as pa
import pytest
import torch

from genrec.checkpoint import load_checkpoint
from genrec.cli import post_json, sample_history
from genrec.data.schema import DataError
from tests.conftest import tiny_config

pytestmark = pytest.mark.integration


def test_pretrain_two_workers_zero3_loss_falls(ray_local, storage):
    from trainers.pretrain import run

    cfg = tiny_config(storage, "train.workers=2", "train.cpus_per_worker=0.5", "train.zero_stage=3",
                      "train.epochs=4", "tracking.wandb=offline")
    result = run(cfg, run_name="pretrain-test")
    history = json.loads((storage / "runs" / "pretrain-test" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    losses = [h["loss"] for h in history]
    assert losses == sorted(losses, reverse=True) and losses[-1] < 0.9 * losses[0], losses
    for h in history:
        assert 0 < h["mrr"] <= 1 and h["events_per_s"] > 0 and h["requests"] > 0
    # wandb wrote an offline run beside the results
    assert list((storage / "wandb").rglob("offline-run-*"))
    # The checkpoint loads with plain torch (no DeepSpeed) and ranks the whole catalogue.
    best = result.get_best_checkpoint(metric="mrr", mode="max")
    loaded = load_checkpoint(best.path)
    assert loaded.spec.layers == 2 and loaded.spec.num_items == loaded.items.num_rows
    z = torch.zeros(1, 4, dtype=torch.long)
    scores = loaded.model.score_last(torch.tensor([[1, 2, 3, 0]]), z, z, torch.ones(1, 4), torch.tensor([3]))
    assert scores.shape == (1, loaded.spec.num_items + 1) and torch.isfinite(scores[0, 1:]).all()
    # A title launched after training joins the catalogue without retraining, scored from its metadata alone.
    twin = loaded.items.slice(0, 1)
    new = pa.table({"item_id": [10**9], "title": twin.column("title"), "genres": twin.column("genres"),
                    "year": twin.column("year"), "launch_ts": twin.column("launch_ts"), "text": twin.column("text")})
    assert loaded.add_items(new) == [loaded.spec.num_items + 1]
    scores = loaded.model.score_last(torch.tensor([[1, 2, 3, 0]]), z, z, torch.ones(1, 4), torch.tensor([3]))
    assert scores.shape == (1, loaded.spec.num_items + 2) and torch.isfinite(scores[0, -1])
    with pytest.raises(DataError, match="already in the catalogue"):
        loaded.add_items(new)


def test_in_batch_negatives_with_logq_and_mtp_train_through_ray_and_deepspeed(ray_local, storage):
    """Sampled softmax is the run above; in-batch negatives with logQ and 3-token MTP also learn through the trainer.
    (Full softmax trains in tests/test_model.py; through Ray it differs only in its FLOPs count, so one Ray run here
    keeps the suite's time down.)"""
    from trainers.pretrain import run

    decoding = "in_batch"
    cfg = tiny_config(storage, "train.workers=1", "train.cpus_per_worker=0.5", "train.epochs=2",
                      f"model.decoding={decoding}", "model.logq=true", "model.mtp_k=3", f"name=test-{decoding}")
    run(cfg, run_name=f"decoding-{decoding}")
    history = json.loads((storage / "runs" / f"decoding-{decoding}" / "history.json").read_text())
    assert history[1]["loss"] < history[0]["loss"] and history[1]["mrr"] > 0, history
    assert history[0]["flops_per_token"] > 0 and history[0]["model_tflops_per_s"] > 0


@pytest.fixture(scope="module")
def winner(ray_local, storage):
    from tuning.sweep import run

    # 2 lengths x 2 retrains (a training window ending at the cutoff, and one ending 48 h before), two at a time.
    cfg = tiny_config(storage, "train.workers=1", "train.cpus_per_worker=0.45", "train.epochs=2",
                      "tune.presets=[custom]", "tune.max_seq_len=[8,16]", "tune.max_concurrent_trials=2",
                      "tune.seeds=[0]", "tune.window_shifts_h=[0,48]")
    return cfg, run(cfg, "sweep-test")


def test_sweep_ranks_trials_and_writes_winner(winner):
    cfg, manifest = winner
    assert json.loads(cfg.winner_path().read_text()) == json.loads(json.dumps(manifest))
    trials = manifest["trials"]
    assert sorted((t["max_seq_len"], t["window_shift_h"]) for t in trials) == [(8, 0), (8, 48), (16, 0), (16, 48)]
    assert all(t["status"] == "ok" for t in trials)
    assert [t["mrr"] for t in trials] == sorted((t["mrr"] for t in trials), reverse=True)
    # The winner is the best of the freshest retrains (trained up to the cutoff), ready to serve.
    fresh = [t for t in trials if t["window_shift_h"] == 0]
    assert manifest["metrics"]["mrr"] == fresh[0]["mrr"] and manifest["max_seq_len"] == fresh[0]["max_seq_len"]
    assert manifest["cost"]["events_processed"] > 0 and manifest["cost"]["wall_time_s"] > 0
    assert load_checkpoint(manifest["checkpoint"]).spec.max_seq_len == manifest["max_seq_len"]
    # A retrain on the window that ends 48 h earlier saw fewer events.
    seen = {(t["max_seq_len"], t["window_shift_h"]): t["events_processed"] for t in trials}
    assert seen[(8, 48)] < seen[(8, 0)] and seen[(16, 48)] < seen[(16, 0)]


def test_resume_keeps_finished_trials(winner):
    """`genrec sweep --resume` restores the Tune experiment: finished trials are kept, not trained again."""
    from genrec.config import ConfigError
    from tuning.sweep import run

    cfg, manifest = winner
    again = run(cfg, resume="sweep-test")
    assert again["experiment"] == manifest["experiment"] and again["checkpoint"] == manifest["checkpoint"]
    assert [t["wall_time_s"] for t in again["trials"]] == [t["wall_time_s"] for t in manifest["trials"]]
    with pytest.raises(ConfigError, match="not a Tune experiment folder"):
        run(cfg, resume="no-such-sweep")


def test_report_from_the_sweep(winner, tmp_path):
    """`genrec report` on the Tune results the sweep wrote: every trial, the retrains' top-10 overlap, the generator
    oracle per task, a self-contained HTML page and PNG plots."""
    import base64

    from genrec.cli import main

    cfg, manifest = winner
    out = tmp_path / "report"
    assert main(["report", manifest["experiment"], "--out", str(out), "--bootstrap", "50"]) == 0
    md = (out / "report.md").read_text()
    assert md.count("| custom | 25k |") == 4 + 2  # every trial, every (size, length) cell
    assert "Not answered: it needs three or more" in md  # one size only: no fit, no correlation; said so
    page = (out / "report.html").read_text()
    png = base64.b64decode(page.split('src="data:image/png;base64,')[1].split('"')[0])
    assert png.startswith(b"\x89PNG") and (out / "stability.png").is_file() and (out / "curves.png").is_file()
    analysis = json.loads((out / "analysis.json").read_text())
    cells = analysis["stability"]["cells"]
    assert [c["retrains"] for c in cells] == [2, 2] and all(0 <= c["topk_overlap"] <= 1 for c in cells)
    oracle = analysis["oracle"]  # synthetic data: the generator's own ranking, on the same requests
    assert set(oracle) == set(cfg.eval.tasks) and all(0 < o["mrr"] <= 1 for o in oracle.values())
    assert oracle["B"]["mrr"] > max(t["mrr"] for t in manifest["trials"])


def test_finetune_a_task_on_a_frozen_backbone(winner):
    from genrec.checkpoint import load_checkpoint as load
    from trainers.finetune import run

    cfg, manifest = winner
    cfg = cfg.model_copy(deep=True)
    cfg.finetune.checkpoint, cfg.finetune.task, cfg.finetune.mode, cfg.finetune.epochs = "winner", "A", "head", 1
    result = run(cfg, "finetune-test")
    history = json.loads((cfg.storage.path("runs", "finetune-test", "history.json")).read_text())
    # Epoch 0 is the pre-trained model on every task, before any step: the transfer baseline.
    assert [h["epoch"] for h in history] == [0, 1] and history[0]["requests_A"] > 0 and "loss" not in history[0]
    before, after = load(manifest["checkpoint"]), load(result.checkpoint.path)
    b, a = before.model.state_dict(), after.model.state_dict()
    # Frozen: every backbone and embedding weight is the pre-trained one; the new head is not.
    assert all(torch.equal(b[k], a[k]) for k in b if not k.startswith("head."))
    assert not torch.equal(b["head.1.weight"], a["head.1.weight"])


def test_serve_answers_http_and_survives_bad_requests(winner):
    from genrec.cli import start_serve

    cfg, manifest = winner
    url = start_serve(cfg)
    assert url.startswith("http://127.0.0.1:")
    health = json.loads(urllib.request.urlopen(f"{url}/healthz", timeout=30).read())
    assert health["status"] == "ok" and health["titles"] == 80

    history = sample_history(cfg)
    status, body = post_json(f"{url}/recommend", {"history": history, "k": 5})
    assert status == 200, body
    assert len(body["items"]) == 5 and body["unknown_items"] == []
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert not {i["item_id"] for i in body["items"]} & {e["item_id"] for e in history}  # seen titles excluded

    bad = [
        ({"history": [], "k": 5}, "history"),
        ({"history": [{"item_id": "abc"}]}, "item_id"),
        ({"history": history, "k": 0}, "k"),
        ({"history": history, "k": 10**6}, "k"),
        ({"history": [{"item_id": 10**9}]}, "history"),
        ({"histroy": history}, "histroy"),
    ]
    for req, field in bad:
        status, err = post_json(f"{url}/recommend", req)
        assert 400 <= status < 500 and field in json.dumps(err), (req, status, err)
    # Not JSON at all
    r = urllib.request.Request(f"{url}/recommend", data=b"{not json", headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(r, timeout=30)
    assert e.value.code == 422
    # Unknown titles are reported back, not silently dropped, and the rest still scores.
    status, body = post_json(f"{url}/recommend", {"history": history + [{"item_id": 10**9}], "k": 3})
    assert status == 200 and body["unknown_items"] == [10**9] and len(body["items"]) == 3
    # ...and the server is still serving.
    assert post_json(f"{url}/recommend", {"history": history, "k": 5})[0] == 200
