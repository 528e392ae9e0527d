"""Nothing silently corrupted: shards and checkpoints carry sizes and sha256s, and a truncated or bit-flipped file is
refused with an error naming it. The faults are real bytes changed on disk. (Checked to fail: with the size check
removed from open_shards the truncated shard opens; without verify_checksums the flipped checkpoint loads.)"""

import json
import os
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import safetensors.torch
import torch
import yaml
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
from deepspeed.runtime.fp16.loss_scaler import LossScaler
from deepspeed.runtime.zero.config import ZeroStageEnum

from genrec.checkpoint import (CHECKPOINT_FORMAT, CHECKPOINT_ITEMS, CHECKPOINT_SPEC, CHECKPOINT_WEIGHTS, LEGACY_WEIGHTS,
                               TRAIN_COUNT, TRAINER_STATE, TRAINER_STATE_FORMAT, CheckpointError, load_checkpoint,
                               load_last_good, load_resume_state, read_spec, read_trainer_state, save_resume_state,
                               verify_resumable, write_weights)
from genrec.cli import main as cli_main
from genrec.features import build_vocab
from genrec.model import GenRec, ModelSpec
from genrec.preparation import prepare_shards
from genrec.shards import CHECKSUMS, ShardError, open_shards, verify_checksums, verify_shards, write_checksums
from genrec.storage import StorageError, relative_inside, store
from genrec.engine import weights_only_checkpoint_engine
from tests.conftest import tiny_config


def flip_byte(path, offset=-100):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_truncated_or_flipped_shard_is_refused_and_rebuilt(tmp_path):
    cfg = tiny_config(tmp_path)
    shards = prepare_shards(cfg, echo=lambda *_: None)
    part = shards.root / shards.manifest["files"][1]["path"]
    good = part.read_bytes()
    flip_byte(part)  # same size: only the checksum sees it
    open_shards(shards.root)
    with pytest.raises(ShardError, match=f"{part}: its sha256 differs"):
        verify_shards(open_shards(shards.root))
    part.write_bytes(good[:-10])  # truncated: every opener sees it, workers included
    with pytest.raises(ShardError, match=f"{part}: {len(good) - 10:,} bytes, .* says {len(good):,}"):
        open_shards(shards.root)
    # The run's data preparation says why and rebuilds from the source data (the last good state).
    said = []
    again = prepare_shards(cfg, echo=said.append)
    assert any("unusable" in s and str(part) in s for s in said), said
    verify_shards(again)
    assert part.read_bytes() == good  # the same seeded source: the same bytes


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "train/../../x", "~/x", "C:/x", ""])
def test_a_path_that_leaves_its_folder_is_refused(name):
    with pytest.raises(StorageError, match="manifest.json: lists .* not a path inside its folder"):
        relative_inside(name, "manifest.json")


def test_relative_paths_inside_the_folder_pass():
    assert relative_inside("train/part-00000.parquet", "m") == "train/part-00000.parquet"
    assert relative_inside("v1/a..b.parquet", "m") == "v1/a..b.parquet"  # dots inside a name are fine


def test_manifests_and_listings_cannot_point_outside_their_folder(tmp_path):
    # Manifests are files anyone with write access to the store can edit: a listed path that climbs out would have
    # genrec read and hash files elsewhere, or copy them into a cache folder outside the cache.
    secret = tmp_path / "secret.txt"
    secret.write_text("x")
    shards = prepare_shards(tiny_config(tmp_path / "cfg"), echo=lambda *_: None)
    manifest = json.loads((shards.root / "manifest.json").read_text())
    manifest["files"][0]["path"] = "../../../secret.txt"
    (shards.root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match="not a path inside its folder"):
        open_shards(shards.root)
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / CHECKSUMS).write_text(json.dumps({"../secret.txt": {"bytes": 1, "sha256": "0" * 64}}))
    with pytest.raises(CheckpointError, match="not a path inside its folder"):
        verify_checksums(folder, CheckpointError)
    remote = store(f"file://{tmp_path}/bucket", str(tmp_path / "cache"))
    with pytest.raises(StorageError, match="not a path inside its folder"):
        remote.fetch_dir("bucket/runs/../../../../outside")


def _checkpoint(folder):
    items = pa.table({"item_id": [10, 20, 30], "title": ["a", "b", "c"], "genres": [["x"], ["y"], []],
                      "year": pa.array([2000, None, 1999], pa.int32()), "launch_ts": pa.array([0, 5, None], pa.int64()),
                      "text": ["", "", ""], "index": pa.array([1, 2, 3], pa.int32()),
                      TRAIN_COUNT: pa.array([4, 1, 0], pa.int64())})
    spec = ModelSpec(num_items=3, layers=1, width=16, heads=2, max_seq_len=4, features=build_vocab(items).to_dict(),
                     title_age=True)
    folder.mkdir()
    write_weights(GenRec(spec).state_dict(), folder / CHECKPOINT_WEIGHTS)
    (folder / CHECKPOINT_SPEC).write_text(json.dumps({"format": CHECKPOINT_FORMAT, "spec": spec.to_dict()}))
    pq.write_table(items, folder / CHECKPOINT_ITEMS)
    write_checksums(folder, [CHECKPOINT_WEIGHTS, CHECKPOINT_SPEC, CHECKPOINT_ITEMS])


def test_flipped_or_truncated_checkpoint_is_refused(tmp_path):
    ckpt = tmp_path / "checkpoint"
    _checkpoint(ckpt)
    assert load_checkpoint(ckpt).spec.num_items == 3
    listed = json.loads((ckpt / CHECKSUMS).read_text())
    assert set(listed) == {CHECKPOINT_WEIGHTS, CHECKPOINT_SPEC, CHECKPOINT_ITEMS}
    weights = ckpt / CHECKPOINT_WEIGHTS
    good = weights.read_bytes()
    flip_byte(weights, len(good) // 2)  # inside the tensor data: torch would load a wrong weight without a word
    with pytest.raises(CheckpointError, match=f"{weights}: its sha256 differs .*serve another checkpoint"):
        load_checkpoint(ckpt)
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match=f"{weights}: .* bytes, .* says {len(good):,} \\(truncated"):
        load_checkpoint(ckpt)
    weights.write_bytes(good)
    assert load_checkpoint(ckpt).spec.num_items == 3  # restored bytes: usable again


def test_a_checkpoint_without_checksums_is_refused_unless_allowed(tmp_path):
    # Serving weights, and resume state: without their checksums nothing shows they are what genrec wrote.
    ckpt = tmp_path / "checkpoint"
    _checkpoint(ckpt)
    (ckpt / CHECKSUMS).unlink()
    with pytest.raises(CheckpointError, match=f"{ckpt / CHECKSUMS}: missing, .* refused. If you trust it .*"
                                              "storage.allow_unverified_checkpoints=true"):
        load_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match="checksums.json: missing"):
        load_last_good(ckpt)
    assert load_checkpoint(ckpt, allow_unverified=True).spec.num_items == 3
    assert load_last_good(ckpt, allow_unverified=True)[1] is None
    state = {"world": 1, "epoch": 1}  # the trainer state of a genrec before resume checksums were kept
    with pytest.raises(CheckpointError, match="resume state has no checksums, .* refused"):
        verify_resumable(str(ckpt), state)
    verify_resumable(str(ckpt), state, allow_unverified=True)


def test_a_corrupt_checkpoint_falls_back_to_the_last_good_one_of_its_run(tmp_path):
    older, newer = tmp_path / "checkpoint_2026-11-26_01-00-00.000000", tmp_path / "checkpoint_2026-11-26_02-00-00.0"
    _checkpoint(older)
    _checkpoint(newer)
    assert load_last_good(newer)[0].path == newer and load_last_good(newer)[1] is None
    weights = newer / CHECKPOINT_WEIGHTS
    flip_byte(weights, weights.stat().st_size // 2)
    loaded, why = load_last_good(newer)
    assert loaded.path == older and str(weights) in why and "serving checkpoint_2026-11-26_01-00-00.000000" in why
    (older / CHECKPOINT_ITEMS).unlink()  # no good checkpoint left: the original error, naming the file
    with pytest.raises(CheckpointError, match=f"{weights}: its sha256 differs"):
        load_last_good(newer)


def test_a_title_added_without_launch_time_launches_now(tmp_path):
    import time

    ckpt = tmp_path / "checkpoint"
    _checkpoint(ckpt)
    loaded = load_checkpoint(ckpt)
    before = int(time.time())
    new = pa.table({"item_id": [40, 50], "title": ["d", "e"], "genres": [["x"], []],
                    "launch_ts": pa.array([123, None], pa.int64())})
    assert loaded.add_items(new) == [4, 5]
    launch = loaded.items.column("launch_ts").to_pylist()
    assert launch[3] == 123 and before <= launch[4] <= int(time.time())
    assert loaded.model.items.f_launch[5] == launch[4]  # the model's catalogue has it: scored as a new title


class _RunsCode:
    """What a rewritten resume file could hold: unpickling it calls os.mkdir (any callable would do)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_resume_state_is_loaded_without_unpickling_code(tmp_path):
    # DeepSpeed's own checkpoint engine loads with weights_only=False: a resume file anyone with write access to the
    # storage rewrites (checksums and all) runs code in every trainer. The trainer's engine loads tensors and
    # DeepSpeed's few checkpoint types only, and refuses the rest without running it.
    engine = weights_only_checkpoint_engine(TorchCheckpointEngine(None))
    good = {"module": {"w": torch.ones(2)}, "loss_scaler": LossScaler(1.0), "stage": ZeroStageEnum.weights}
    torch.save(good, tmp_path / "good.pt")
    loaded = engine.load(str(tmp_path / "good.pt"))
    assert torch.equal(loaded["module"]["w"], torch.ones(2)) and loaded["stage"] == ZeroStageEnum.weights
    evil = tmp_path / "optim_states.pt"
    torch.save({"w": torch.ones(2), "x": _RunsCode(str(tmp_path / "ran"))}, evil)
    with pytest.raises(CheckpointError, match="optim_states.pt: resume state .* refused, not unpickled"):
        engine.load(str(evil))
    assert not (tmp_path / "ran").exists()
    TorchCheckpointEngine(None).load(str(evil))  # what DeepSpeed's own engine does with it
    assert (tmp_path / "ran").is_dir()


class _EngineStandIn:
    """DeepSpeed's engine state is DeepSpeed's own; what genrec writes and reads beside it is each rank's RNG file."""

    def save_checkpoint(self, folder, tag):
        os.makedirs(os.path.join(folder, tag))

    def load_checkpoint(self, folder, tag):
        assert os.path.isdir(os.path.join(folder, tag))


def test_a_ranks_rng_states_come_back_from_its_resume_state(tmp_path):
    """save_resume_state's RNG file of a rank is the one load_resume_state reads back (and its listing covers it):
    the sampler and torch draw after a resume what they would have drawn without the restart."""
    sampler = torch.Generator().manual_seed(1)
    save_resume_state(_EngineStandIn(), str(tmp_path), 1, sampler, {"world": 2})
    unbroken = torch.rand(3, generator=sampler), torch.rand(3)
    restarted = torch.Generator().manual_seed(99)
    torch.manual_seed(99)
    load_resume_state(_EngineStandIn(), tmp_path, 1, restarted)
    assert torch.equal(torch.rand(3, generator=restarted), unbroken[0]) and torch.equal(torch.rand(3), unbroken[1])
    verify_resumable(str(tmp_path), {"world": 2, "resume_checksums": True}, ranks=[1], weights=False)


def test_a_trainer_state_without_its_format_loads_and_a_newer_format_is_refused(tmp_path):
    """trainer_state.json carries its format: one written before the key reads as the first format; one of a newer
    genrec is refused, naming the file and what to do, rather than resumed from fields this genrec may misread."""
    save_resume_state(_EngineStandIn(), str(tmp_path), 0, torch.Generator(), {"epoch": 2, "world": 1})
    assert read_trainer_state(str(tmp_path)) == {"epoch": 2, "world": 1, "format": TRAINER_STATE_FORMAT,
                                                 "resume_checksums": True}
    path = tmp_path / TRAINER_STATE
    path.write_text(json.dumps({"epoch": 2, "world": 1, "resume_checksums": True}))
    assert read_trainer_state(str(tmp_path))["epoch"] == 2
    path.write_text(json.dumps({"epoch": 2, "world": 1, "format": TRAINER_STATE_FORMAT + 1}))
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path))}: trainer state format "
                                              rf"{TRAINER_STATE_FORMAT + 1}, written by a newer genrec.*upgrade genrec"):
        read_trainer_state(str(tmp_path))


def test_a_format_1_checkpoint_still_loads_and_a_newer_format_is_refused(tmp_path):
    """Checkpoints written before safetensors (weights as a torch file, no "format" in model.json) load, weights only;
    one whose format is newer than this genrec's is refused, naming the file and what to do."""
    new, old = tmp_path / "new", tmp_path / "old"
    _checkpoint(new)
    loaded = load_checkpoint(new)
    old.mkdir()
    torch.save(loaded.model.state_dict(), old / LEGACY_WEIGHTS)
    (old / CHECKPOINT_SPEC).write_text(json.dumps({"spec": loaded.spec.to_dict()}))
    pq.write_table(loaded.items, old / CHECKPOINT_ITEMS)
    write_checksums(old, [LEGACY_WEIGHTS, CHECKPOINT_SPEC, CHECKPOINT_ITEMS])
    legacy = load_checkpoint(old)
    assert all(torch.equal(v, legacy.model.state_dict()[k]) for k, v in loaded.model.state_dict().items())
    # The file loaded is the one model.json's format names and checksums.json covers: an unlisted safetensors file
    # dropped beside a format-1 checkpoint is not read.
    write_weights({k: torch.zeros_like(v) for k, v in loaded.model.state_dict().items()}, old / CHECKPOINT_WEIGHTS)
    assert all(torch.equal(v, load_checkpoint(old).model.state_dict()[k]) for k, v in loaded.model.state_dict().items())
    info = json.loads((new / CHECKPOINT_SPEC).read_text())
    assert info["format"] == CHECKPOINT_FORMAT
    (new / CHECKPOINT_SPEC).write_text(json.dumps({**info, "format": CHECKPOINT_FORMAT + 1}))
    write_checksums(new, [CHECKPOINT_WEIGHTS, CHECKPOINT_SPEC, CHECKPOINT_ITEMS])
    with pytest.raises(CheckpointError, match=f"{new / CHECKPOINT_SPEC}: checkpoint format {CHECKPOINT_FORMAT + 1}, "
                                              "written by a newer genrec.*upgrade genrec"):
        load_checkpoint(new)


def test_weights_that_share_memory_are_written_once_each(tmp_path):
    """safetensors refuses two names on one tensor's memory (a tied table seen twice); each is written as its own copy,
    with equal values."""
    table = torch.arange(6.0).reshape(2, 3)
    write_weights({"a": table, "b": table, "c": table[1]}, tmp_path / "w.safetensors")
    back = safetensors.torch.load_file(str(tmp_path / "w.safetensors"))
    assert torch.equal(back["a"], table) and torch.equal(back["b"], table) and torch.equal(back["c"], table[1])


def test_export_converts_a_checkpoint_to_safetensors_with_a_model_card(tmp_path, capsys):
    """`genrec export`: the weights in OUT load with safetensors alone and equal the checkpoint's; the card gives the
    data, the kept epoch's validation figures, the test figures of the run's selected.json, the retrain command and the
    commit; a format-1 checkpoint is converted; an existing OUT is refused."""
    run = tmp_path / "runs" / "run-a"
    ckpt = run / "checkpoint_2026-12-05_10-00-00.000000"
    run.mkdir(parents=True)
    _checkpoint(ckpt)
    info = json.loads((ckpt / CHECKPOINT_SPEC).read_text())
    info.pop("format")  # written as format 1 (see below)
    (ckpt / CHECKPOINT_SPEC).write_text(json.dumps({**info, "dataset": "ml-100k", "split": "leave_one_out",
                                                    "commit": "abc123", "config": {"name": "x"},
                                                    "metrics": {"epoch": 7, "valid_ndcg@10": 0.1234,
                                                                "popularity_valid_ndcg@10": 0.0456}}))
    (ckpt / CHECKPOINT_WEIGHTS).unlink()  # and as format 1: a torch file, converted by the export
    torch.save(GenRec(read_spec(ckpt)).state_dict(), ckpt / LEGACY_WEIGHTS)
    write_checksums(ckpt, [LEGACY_WEIGHTS, CHECKPOINT_SPEC, CHECKPOINT_ITEMS])
    (run / "selected.json").write_text(json.dumps({"rule": "highest valid_ndcg@10", "checkpoint": str(ckpt),
                                                   "test": {"ndcg@10": 0.0999, "requests": 9}}))
    out = tmp_path / "exported"
    assert cli_main(["export", str(ckpt), str(out), "--set", f"storage.root={tmp_path}"]) == 0
    weights = safetensors.torch.load_file(str(out / CHECKPOINT_WEIGHTS))
    model = load_checkpoint(ckpt).model.state_dict()
    assert weights.keys() == model.keys() and all(torch.equal(weights[k], model[k]) for k in model)
    assert json.loads((out / CHECKPOINT_SPEC).read_text())["format"] == CHECKPOINT_FORMAT
    assert load_checkpoint(out).spec == read_spec(ckpt)
    card = (out / "MODEL_CARD.md").read_text()
    for said in ("ml-100k, leave_one_out split", "epoch 7", "ndcg@10 0.1234", "popularity on the same requests: "
                 "ndcg@10 0.0456", "**test** (read once", "ndcg@10 0.0999, 9 requests", "genrec train --config "
                 "config.yaml", "commit abc123"):
        assert said in card, (said, card)
    assert yaml.safe_load((out / "config.yaml").read_text()) == {"name": "x"}
    assert cli_main(["export", str(ckpt), str(out), "--set", f"storage.root={tmp_path}"]) == 2
    assert f"{out}: already exists" in capsys.readouterr().err
