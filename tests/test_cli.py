"""The commands a person types: --help everywhere, presets, and clear errors instead of tracebacks."""

import json
import subprocess
import sys

import pytest

from genrec.cli import main


def run(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("module", ["genrec.cli", "trainers.pretrain", "trainers.finetune", "tuning.sweep"])
def test_help(module):
    r = run("-m", module, "--help")
    assert r.returncode == 0, r.stderr
    assert "--config" in r.stdout or "presets" in r.stdout


def test_presets_table(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "1b" in out and "1,006,716,928" in out and "1,968,768" in out


def test_bad_config_is_one_line_not_a_traceback(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("train:\n  wrokers: 2\nmodel:\n  preset: 5m\n")
    r = run("-m", "trainers.pretrain", "--config", str(cfg))
    assert r.returncode == 2
    assert "train.wrokers: unknown key" in r.stderr and "unknown preset '5m'" in r.stderr
    assert "Traceback" not in r.stderr
    r = run("-m", "genrec.cli", "data", "prepare", "--config", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "missing.yaml: config file not found" in r.stderr
    r = run("-m", "genrec.cli", "data", "prepare", "--set", "data.source=movielens",
            "--set", f"data.path={tmp_path}")
    assert r.returncode == 2 and "Traceback" not in r.stderr and str(tmp_path) in r.stderr


def test_prepare_writes_shards(tmp_path, capsys):
    assert main(["data", "prepare", "--set", f"storage.root={tmp_path}", "--set", "data.synthetic.users=50",
                 "--set", "data.synthetic.items=30"]) == 0
    assert (tmp_path / "shards" / "local" / "manifest.json").is_file()
    assert '"train_users"' in capsys.readouterr().out


def test_run_names_continue_only_when_asked(tmp_path):
    """Ray Train continues any run whose folder holds a checkpoint: genrec makes that an explicit --resume."""
    from genrec.config import ConfigError
    from genrec.runs import check_run_name
    from genrec.checkpoint import TRAINER_STATE
    from tests.conftest import tiny_config

    cfg = tiny_config(tmp_path)
    run = cfg.storage.path("runs", "r1")
    assert check_run_name(cfg, "r1", None) == ("r1", None) and check_run_name(cfg, None, None) == (None, None)
    with pytest.raises(ConfigError, match="--resume r1: .* holds no checkpoint"):
        check_run_name(cfg, None, "r1")
    run.mkdir(parents=True)  # a run that died before its first checkpoint: the name is free again
    assert check_run_name(cfg, "r1", None) == ("r1", None)
    (run / "checkpoint_manager_snapshot.json").write_text(
        json.dumps({"latest_checkpoint_result": {"checkpoint_dir_name": "checkpoint_1"}}))
    (run / "checkpoint_1").mkdir()
    with pytest.raises(ConfigError, match="--name r1: .* holds a run already; pass --resume r1"):
        check_run_name(cfg, "r1", None)
    with pytest.raises(ConfigError, match=f"has no {TRAINER_STATE}"):
        check_run_name(cfg, None, "r1")
    (run / "checkpoint_1" / TRAINER_STATE).write_text("{}")  # a trainer state without resume checksums
    with pytest.raises(ConfigError, match="resume state has no checksums, .*allow_unverified_checkpoints=true"):
        check_run_name(cfg, None, "r1")
    cfg.storage.allow_unverified_checkpoints = True
    assert check_run_name(cfg, None, "r1") == ("r1", None)  # Ray Train's record names the checkpoint
    with pytest.raises(ConfigError, match="a resumed run keeps its name"):
        check_run_name(cfg, "other", "r1")


def test_resume_goes_on_from_the_newest_whole_checkpoint_when_ray_trains_record_is_unreadable(tmp_path, capsys):
    """Ray Train writes its record of a run's checkpoints in place: a full disk leaves it empty (seen: then Ray Train
    cannot restore the run and genrec died with a JSONDecodeError). The run goes on from its newest checkpoint whose
    files all pass their checksums; a newer one cut short is passed over, naming the file; the record is kept aside.
    (The whole story on a real full disk under Ray Train: tests/test_disk_full.py.)"""
    from genrec.config import ConfigError
    from genrec.shards import write_checksums
    from genrec.runs import check_run_name
    from genrec.checkpoint import RESUME_CHECKSUMS, TRAINER_STATE
    from tests.conftest import tiny_config

    cfg = tiny_config(tmp_path, "train.workers=1")  # the worker count that wrote them: their DeepSpeed state is read
    run = cfg.storage.path("runs", "r1")

    def checkpoint(name: str, epoch: int) -> None:
        resume = run / name / "resume"
        (resume / "state").mkdir(parents=True)
        (resume / "state" / "optim.pt").write_bytes(b"x" * 1000)
        write_checksums(resume, ["state/optim.pt"], RESUME_CHECKSUMS.format(rank=0))
        write_checksums(run / name, [])  # the serving files' listing (no weights in this sketch of a checkpoint)
        (run / name / TRAINER_STATE).write_text(json.dumps({"epoch": epoch, "world": 1, "resume_checksums": True}))

    checkpoint("checkpoint_2026-01-01_00-00-01", 1)
    checkpoint("checkpoint_2026-01-01_00-00-02", 2)
    snapshot = run / "checkpoint_manager_snapshot.json"
    snapshot.write_text("")  # what the full disk left
    optim = run / "checkpoint_2026-01-01_00-00-02" / "resume" / "state" / "optim.pt"
    optim.write_bytes(b"x" * 600)  # the newer checkpoint's upload cut short
    assert check_run_name(cfg, None, "r1") == ("r1", str(run / "checkpoint_2026-01-01_00-00-01"))
    out = capsys.readouterr().out
    assert "is not readable JSON (0 bytes" in out and "going on from checkpoint_2026-01-01_00-00-01 (epoch 1)" in out
    assert f"a newer one does not: {optim}: 600 bytes" in out
    # Set aside, not deleted: Ray Train starts a new record; a later --resume uses that one.
    assert not snapshot.exists() and len(list(run.glob("checkpoint_manager_snapshot.json.unusable-*"))) == 1
    with pytest.raises(ConfigError, match="--name r1: .* holds a run already"):  # its checkpoints are still there
        check_run_name(cfg, "r1", None)
    # With no whole checkpoint left, the error says why.
    optim.with_name("optim.pt").unlink()
    (run / "checkpoint_2026-01-01_00-00-01" / "resume" / "state" / "optim.pt").write_bytes(b"y" * 1000)  # a flip
    with pytest.raises(ConfigError, match=r"holds no checkpoint .* its newest checkpoint is not whole \(.*optim.pt: "
                                          r"listed in .* but missing\), nor any older one: start a new run$"):
        check_run_name(cfg, None, "r1")


@pytest.mark.parametrize("stop", ["sweep", "keyboard"])
def test_an_interrupted_entrypoint_is_one_line_and_exit_130(stop, capsys):
    """What `python -m tuning.sweep` / `trainers.pretrain` print and return when stopped: an interrupted sweep's own
    line (how to go on), or a bare Ctrl-C before Tune runs (shard build, Ray start); never a traceback."""
    from genrec.entrypoint import run_entrypoint
    from genrec.errors import Interrupted

    def run(cfg, name, rebuild, resume=None):
        if stop == "sweep":
            raise Interrupted("sweep s: stopped with 0 of 1 trials finished; no winner written")
        raise KeyboardInterrupt

    assert run_entrypoint("python -m tuning.sweep", "", run, [], resume="SWEEP") == 130
    err = capsys.readouterr().err
    assert err == ("interrupted: sweep s: stopped with 0 of 1 trials finished; no winner written\n"
                   if stop == "sweep" else "interrupted\n")
