"""The commands a person types: --help everywhere, presets, and clear errors instead of tracebacks."""

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
