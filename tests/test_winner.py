"""The winner manifest as a typed, versioned contract (genrec.winner): what tuning writes, serving and fine-tuning
read back field for field, and what is refused, with the file and the field named."""

import json
import re

import pytest

from genrec.config import CONFIG_VERSION, GenrecConfig
from genrec.storage import Store
from genrec.winner import WINNER_SCHEMA_VERSION, WinnerError, WinnerManifest, read_winner, write_winner_manifest


def manifest(**changes) -> dict:
    trial = {"preset": "custom", "max_seq_len": 16, "seed": 0, "window_shift_h": 48.0, "status": "ok",
             "checkpoint": "/runs/a/checkpoint_1", "valid_ndcg@10": 0.1, "rank": 1}
    failed = {"preset": "custom", "max_seq_len": 16, "seed": 0, "window_shift_h": 1e6, "status": "failed",
              "error": "no training window", "rank": "-"}
    return {"sweep": "s", "experiment": "/tune/s", "created_at": 1.0, "selection": "highest valid_ndcg@10",
            "metric": "valid_ndcg@10", "checkpoint": "/runs/b/checkpoint_2", "preset": "custom", "max_seq_len": 16,
            "seed": 0, "metrics": {"valid_ndcg@10": 0.09, "best_epoch": 2}, "cost": {
                "wall_time_s": 3.0, "events_processed": 100, "train_flops": 1e9},
            "config": {"name": "x"}, "trials": [trial, failed], **changes}


def test_a_manifest_reads_back_as_written(tmp_path):
    store = Store(str(tmp_path))
    written = WinnerManifest.model_validate(manifest())
    write_winner_manifest(store, str(tmp_path / "winner.json"), written)
    again = read_winner(store, str(tmp_path / "winner.json"))
    assert again == written and again.schema_version == WINNER_SCHEMA_VERSION
    assert again.trials[0].model_extra["valid_ndcg@10"] == 0.1  # a trial's figures travel as extra fields
    # Serving routes every finished trial by its id; the failed one serves nothing.
    assert again.served_models() == {"custom-len16-s0-w48": "/runs/a/checkpoint_1"}


def test_the_config_reads_back_typed_from_a_config_tree_without_the_serve_token(tmp_path):
    """The manifest's config is a GenrecConfig; the file holds it as the config tree a config file holds (the shape
    earlier genrecs wrote), and never the serve token, though the object written carried one."""
    store = Store(str(tmp_path))
    written = WinnerManifest.model_validate(manifest(config={"name": "x", "serve": {"token": "s3cret-s3cret-s3cret"}}))
    assert isinstance(written.config, GenrecConfig) and written.config.serve.token == "s3cret-s3cret-s3cret"
    write_winner_manifest(store, str(tmp_path / "winner.json"), written)
    text = (tmp_path / "winner.json").read_text()
    assert "s3cret-s3cret-s3cret" not in text
    on_disk = json.loads(text)["config"]
    assert on_disk["name"] == "x" and on_disk["version"] == CONFIG_VERSION and on_disk["serve"]["token"] is None
    again = read_winner(store, str(tmp_path / "winner.json"))
    assert again.config.name == "x" and again.config.serve.token is None
    assert written.config.serve.token == "s3cret-s3cret-s3cret"  # the caller's manifest is left as it was


def test_a_manifest_whose_config_is_of_config_version_1_still_loads(tmp_path):
    """A manifest of an earlier genrec holds its config in that genrec's config version: migrated as it is read."""
    path = tmp_path / "winner.json"
    path.write_text(json.dumps(manifest(config={"name": "x", "tune": {"max_seq_len": [16, 32]}})))
    loaded = read_winner(Store(str(tmp_path)), str(path))
    assert loaded.config.version == CONFIG_VERSION and loaded.config.tune.max_seq_lens == [16, 32]


@pytest.mark.parametrize("change, said", [
    ({"config": {"name": "x", "model": {"surprise": 1}}}, "field config.model.surprise: Extra inputs are not permitted"),
    ({"config": {"version": CONFIG_VERSION + 1}}, f"field config: config: version: {CONFIG_VERSION + 1}: written for "
                                                  "a newer genrec"),
    ({"checkpoint": None}, "field checkpoint: Input should be a valid string"),
    ({"cost": {"wall_time_s": -1.0, "events_processed": 1}}, "field cost.wall_time_s: Input should be greater"),
    ({"surprise": 1}, "field surprise: Extra inputs are not permitted"),
    ({"schema_version": 99}, "schema_version 99, this genrec reads 1"),
])
def test_a_manifest_that_does_not_fit_is_refused_naming_the_file_and_field(tmp_path, change, said):
    path = tmp_path / "winner.json"
    path.write_text(json.dumps(manifest(**change)))
    with pytest.raises(WinnerError, match=rf"^{re.escape(str(path))}: .*{said}.*run the sweep again"):
        read_winner(Store(str(tmp_path)), str(path))


def test_a_missing_or_torn_manifest_says_what_to_do(tmp_path):
    store = Store(str(tmp_path))
    with pytest.raises(WinnerError, match=r"no winner manifest; run `genrec sweep"):
        read_winner(store, str(tmp_path / "winner.json"))
    (tmp_path / "winner.json").write_text('{"sweep": ')
    with pytest.raises(WinnerError, match=r"winner.json: not readable JSON"):
        read_winner(store, str(tmp_path / "winner.json"))


def test_a_trials_shape_is_read_from_numpy_scalars():
    """What a trial trained, from its best epoch as Tune's metrics dataframe holds it: a pandas row of numpy scalars.
    A sweep over max_seq_len "auto" (the demo's) kept the word, and its winner manifest was refused."""
    import numpy as np
    import pandas as pd

    from tuning.sweep import trained_shape

    row = pd.DataFrame({"preset": ["100k"], "max_seq_len": [np.int64(96)], "loss": [5.0]}).iloc[0]
    assert isinstance(row["max_seq_len"], np.integer)
    assert trained_shape(row) == {"preset": "100k", "max_seq_len": 96}
    assert trained_shape(pd.Series({"preset": "2m", "max_seq_len": float("nan")})) == {"preset": "2m"}
    assert trained_shape(pd.Series({"loss": 1.0})) == {}


def test_the_sweep_keeps_each_trials_best_epoch_and_says_in_one_line_when_no_trial_can_be_served(tmp_path, capsys):
    """tuning.sweep's trial table and winner follow genrec.selection (the earliest of a trial's best epochs; failed
    trials last), and a sweep whose every trial failed is a GenrecError with one line per the CLI, not a traceback."""
    from types import SimpleNamespace

    import pandas as pd

    from genrec.config import load_config
    from genrec.entrypoint import explain
    from genrec.errors import SweepFailed
    from tuning.sweep import summarize, write_winner

    def result(valid, error=None, shift=0.0):
        epochs = pd.DataFrame({"epoch": range(1, len(valid) + 1), "valid_ndcg@10": valid, "valid_mrr": 0.1,
                               "valid_hr@10": 0.2, "loss": 5.0, "backbone_params": 10,
                               "checkpoint_path": [f"/ck/{shift}/{e}" for e in range(1, len(valid) + 1)],
                               "wall_time_s": 1.0, "events_processed": 100})
        return SimpleNamespace(config={"preset": "2m", "max_seq_len": 16, "seed": 0, "window_shift_h": shift},
                               metrics_dataframe=epochs, error=error, metrics={"trial_id": str(shift)})

    rows = summarize([result([0.1, 0.3, float("nan"), 0.3], shift=0.0), result([0.5], error=RuntimeError("x")),
                      result([0.4], shift=24.0)], "valid_ndcg@10")
    assert [(r["rank"], r["status"], r.get("best_epoch")) for r in rows] == [(1, "ok", 1), (2, "ok", 2),
                                                                              ("-", "failed", None)]
    assert rows[1]["checkpoint"] == "/ck/0.0/2"  # the earlier of the two best epochs

    cfg = load_config(None, [f"storage.root={tmp_path}"])
    # the winner is the unshifted window's trial, though a trial on an older window scored higher
    manifest = write_winner(cfg, "s", rows)
    assert manifest.checkpoint.endswith("/ck/0.0/2") and manifest.metrics["best_epoch"] == 2
    failed = [{"preset": "custom", "max_seq_len": 16, "seed": 0, "window_shift_h": 0.0, "status": "failed",
               "error": f"Traceback (most recent call last):\n  ...\nValueError: no training window {s}"}
              for s in (1, 1, 2)]
    with pytest.raises(SweepFailed) as caught:
        write_winner(cfg, "s", failed)
    assert explain(caught.value) == 1  # what `genrec sweep` and `python -m tuning.sweep` print, and exit with
    message = capsys.readouterr().err
    assert message.startswith("error: sweep s: ") and message.count("\n") == 1 and "Traceback" not in message
    assert ("every trial failed (custom/len16: ValueError: no training window 1; custom/len16: ValueError: no "
            "training window 2)") in message and "--resume s" in message
