"""Real Ray Data -> Ray Train (DeepSpeed on CPU, gloo) -> Ray Tune -> Ray Serve over HTTP on 127.0.0.1. (Pre-training on
two ZeRO-3 workers, submitted through `ray job submit`, is tests/test_jobs.py.)"""

import json
import urllib.request

import pytest
import torch

from genrec.checkpoint import load_checkpoint
from genrec.cli import post_json, sample_history
from tests.conftest import tiny_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def winner(ray_local, storage):
    from tuning.sweep import run

    # 2 retrains (a training window ending at the cutoff, and one ending 48 h before), run side by side. One length
    # keeps the suite short: a grid over lengths is the same grid_search code with another axis.
    cfg = tiny_config(storage, "train.workers=1", "train.cpus_per_worker=0.45", "train.epochs=1",
                      "tune.presets=[custom]", "tune.max_seq_len=[16]", "tune.max_concurrent_trials=2",
                      "tune.seeds=[0]", "tune.window_shifts_h=[0,48]")
    return cfg, run(cfg, "sweep-test")


def test_sweep_ranks_trials_and_writes_winner(winner):
    cfg, manifest = winner
    assert json.loads(cfg.winner_path().read_text()) == json.loads(json.dumps(manifest))
    trials = manifest["trials"]
    assert sorted((t["max_seq_len"], t["window_shift_h"]) for t in trials) == [(16, 0), (16, 48)]
    assert all(t["status"] == "ok" for t in trials)
    assert [t["mrr"] for t in trials] == sorted((t["mrr"] for t in trials), reverse=True)
    # The winner is the best of the freshest retrains (trained up to the cutoff), ready to serve.
    fresh = [t for t in trials if t["window_shift_h"] == 0]
    assert manifest["metrics"]["mrr"] == fresh[0]["mrr"] and manifest["max_seq_len"] == fresh[0]["max_seq_len"]
    assert manifest["cost"]["events_processed"] > 0 and manifest["cost"]["wall_time_s"] > 0
    assert load_checkpoint(manifest["checkpoint"]).spec.max_seq_len == manifest["max_seq_len"]
    # A retrain on the window that ends 48 h earlier saw fewer events.
    seen = {(t["max_seq_len"], t["window_shift_h"]): t["events_processed"] for t in trials}
    assert seen[(16, 48)] < seen[(16, 0)]


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
    assert md.count("| custom | 25k |") == 2 + 1  # every trial, every (size, length) cell
    assert "Not answered: it needs three or more" in md  # one size only: no fit, no correlation; said so
    page = (out / "report.html").read_text()
    png = base64.b64decode(page.split('src="data:image/png;base64,')[1].split('"')[0])
    assert png.startswith(b"\x89PNG") and (out / "stability.png").is_file() and (out / "curves.png").is_file()
    analysis = json.loads((out / "analysis.json").read_text())
    cells = analysis["stability"]["cells"]
    assert [c["retrains"] for c in cells] == [2] and all(0 <= c["topk_overlap"] <= 1 for c in cells)
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
    # Titles are scored by their age at the request: the same history asked centuries later scores differently.
    later = post_json(f"{url}/recommend", {"history": history, "k": 5, "request_ts": 10**10})[1]
    assert [i["score"] for i in later["items"]] != scores

    bad = [
        ({"history": [], "k": 5}, "history"),
        ({"history": [{"item_id": "abc"}]}, "item_id"),
        ({"history": history, "k": 0}, "k"),
        ({"history": history, "k": 10**6}, "k"),
        ({"history": [{"item_id": 10**9}]}, "history"),
        ({"histroy": history}, "histroy"),
        ({"history": history, "request_ts": -5}, "request_ts"),
        ({"history": history, "request_ts": 1_700_000_000_000}, "request_ts"),  # milliseconds
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
    # A body over serve.max_body_bytes (4 MiB) is refused before it is parsed.
    huge = {"history": history * 15_000, "k": 5}  # about 5 MB
    status, err = post_json(f"{url}/recommend", huge)
    assert status == 413 and "serve.max_body_bytes" in err["detail"], (status, err)
    # A chunked body (no Content-Length) would slip past that limit: it is refused with a 411.
    chunked = urllib.request.Request(f"{url}/recommend", data=iter([json.dumps({"history": history}).encode()]),
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(chunked, timeout=30)
    assert e.value.code == 411 and "content-length" in e.value.read().decode()
    # ...and the server is still serving.
    assert post_json(f"{url}/recommend", {"history": history, "k": 5})[0] == 200


def test_serve_keeps_answering_when_a_replica_is_killed(winner):
    """Two replicas under a steady loopback load (4 clients, one request in flight each); one replica's process gets
    SIGKILL. Requests keep succeeding: at most the ones in flight on the killed replica may fail, and Serve brings a
    new replica up."""
    import os
    import threading
    import time

    import psutil
    from ray import serve

    from genrec.cli import start_serve

    cfg, _ = winner
    cfg = cfg.model_copy(deep=True)
    cfg.serve.replicas, cfg.serve.cpus_per_replica = 2, 0.5
    url = start_serve(cfg)  # redeploys the app with two replicas

    def replicas() -> list[psutil.Process]:
        """This test's Ray only (descendants of this process), never another Ray on the machine."""
        found = []
        for p in psutil.Process(os.getpid()).children(recursive=True):
            try:
                if p.cmdline()[:1] and p.cmdline()[0].startswith("ray::ServeReplica"):
                    found.append(p)
            except psutil.Error:
                pass
        return found

    def running() -> int:
        app = serve.status().applications.get("genrec")
        return sum(d.replica_states.get("RUNNING", 0) for d in app.deployments.values()) if app else 0

    deadline = time.time() + 120
    while (running() < 2 or len(replicas()) < 2) and time.time() < deadline:
        time.sleep(0.5)
    before = replicas()
    assert len(before) == 2, before

    history = sample_history(cfg)
    results: list[tuple[float, int]] = []
    stop = threading.Event()

    def client():
        while not stop.is_set():
            try:
                status, _ = post_json(f"{url}/recommend", {"history": history, "k": 5}, timeout=30)
            except Exception as exc:  # a reset connection, a timeout, a non-JSON 200: all count as failures
                status = type(exc).__name__
            results.append((time.time(), status))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(3)
    killed_at = time.time()
    before[0].kill()
    back = None
    deadline = time.time() + 120
    while time.time() < deadline:
        alive = [p for p in replicas() if p.pid != before[0].pid]
        if running() == 2 and len(alive) == 2:
            back = time.time() - killed_at
            break
        time.sleep(0.5)
    time.sleep(2)  # the load goes on against the restored pair
    stop.set()
    for t in threads:
        t.join(60)
    after = [s for ts, s in results if ts > killed_at]
    failed = [s for s in after if s != 200]
    print(f"replica killed: {len(after)} requests after the kill, {len(failed)} failed {failed}, "
          f"replica back after {back} s")
    assert back is not None, "Serve did not bring a second replica back within 120 s"
    assert len(failed) <= len(threads), failed  # at most the requests in flight on the killed replica
    assert sum(s == 200 for s in after) > 10
