"""The one config file: every shipped YAML loads, and each impossible combination is refused by its dotted key."""

from pathlib import Path

import pytest

from genrec.config import (CONFIG_VERSION, ConfigError, GenrecConfig, dump_config, load_config, stored_config,
                           with_values, without_secrets)

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.eval.primary in cfg.eval.tasks and Path(cfg.storage.root).is_absolute()


def test_storage_root_is_resolved_where_the_config_is_loaded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config(None, ["storage.root=runs"]).storage.root == str(tmp_path / "runs")
    assert load_config(None, ["storage.root=s3://bucket/genrec"]).storage.root == "s3://bucket/genrec"
    # The built-in default too (`genrec pipeline --data DIR` with no config): unresolved, a Tune trial resolved it in
    # its own working directory and the winner's checkpoint landed under /tmp/ray.
    assert load_config(None).storage.root == str(tmp_path / "genrec-runs")


@pytest.mark.parametrize("override, message", [
    ("eval.primary=Z", "eval.primary='Z' is not one of eval.tasks"),
    ("tune.max_seq_len=[16]", "tune.max_seq_len is now tune.max_seq_lens"),  # renamed: a list, a plural name
    ("eval.tasks={'a b': {targets: next}}", "task names"),
    ("eval.tasks.A.end_h=1", "end_h=1.0 must be after start_h=24.0"),
    ("eval.tasks.B.targets=later", "eval.tasks.B.targets"),
    ("eval.delays_h=[-1]", "delays are hours >= 0"),
    ("finetune.task=Q", "finetune.task='Q' is not one of eval.tasks"),
    ("tune.seeds=[]", "tune.seeds and tune.window_shifts_h"),
    ("tune.presets=[3m]", "unknown presets"),
    ("data.partitions=4", "reads Parquet event files in genrec.s event schema: set data.source: parquet"),
])
def test_impossible_settings_are_refused_by_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config(None, [override])


def test_window_shifts_need_a_time_split():
    with pytest.raises(ConfigError, match="need data.split: time"):
        load_config(None, ["data.split=leave_one_out", "tune.window_shifts_h=[0,48]"])
    assert load_config(None, ["data.split=leave_one_out"]).train.window_shift_h == 0


def test_without_secrets_drops_the_serve_token_and_leaves_the_original():
    cfg = load_config(None, ["serve.token=a-secret-token-0123456789"])
    public = without_secrets(cfg)
    assert public.serve.token is None and "a-secret-token" not in dump_config(public)
    assert cfg.serve.token == "a-secret-token-0123456789"  # the process that builds the Serve app keeps it
    assert public.model_dump(exclude={"serve"}) == cfg.model_dump(exclude={"serve"})


def test_a_stored_config_of_an_earlier_genrec_is_carried_over():
    # A sweep's param space written before tune.max_seq_len became tune.max_seq_lens: still reported and resumed.
    tree = load_config(None).model_dump(mode="json")
    del tree["version"]  # an earlier genrec wrote none: version 1
    tree["tune"]["max_seq_len"] = tree["tune"].pop("max_seq_lens")
    assert stored_config(tree).tune.max_seq_lens == ["auto"]
    assert "max_seq_len" in tree["tune"] and "version" not in tree  # the stored tree itself is left as it was


def test_a_search_trials_values_are_set_in_the_stored_tree_and_validated_once(monkeypatch):
    # A search trial's config: the sweep's stored tree (of an earlier genrec here) migrated, its sampled values set,
    # then one validation of the whole config (not one of the tree and another after the values).
    tree = load_config(None).model_dump(mode="json")
    del tree["version"]
    tree["tune"]["max_seq_len"] = tree["tune"].pop("max_seq_lens")
    validated = []
    real = GenrecConfig.model_validate.__func__
    monkeypatch.setattr(GenrecConfig, "model_validate",
                        classmethod(lambda cls, *a, **k: validated.append(1) or real(cls, *a, **k)))
    cfg = with_values(tree, {"train.lr": 0.01})
    assert cfg.train.lr == 0.01 and cfg.tune.max_seq_lens == ["auto"] and len(validated) == 1
    with pytest.raises(ConfigError, match=r"^search values train.lr=-1: invalid config\n  train.lr: "):
        with_values(tree, {"train.lr": -1})


def test_the_config_files_version_older_migrated_newer_refused(tmp_path, capsys):
    from genrec.cli import main

    old = tmp_path / "old.yaml"  # version 1: no version key, the sweep's lengths under their old name
    old.write_text("name: old\ntune:\n  max_seq_len: [16, 32]\n")
    cfg = load_config(old)
    assert cfg.version == CONFIG_VERSION == 2 and cfg.tune.max_seq_lens == [16, 32]
    # `genrec config show` is the command that rewrites it in the current version.
    assert main(["config", "show", "--config", str(old)]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith("version: 2\n") and "max_seq_lens:\n  - 16\n  - 32" in shown
    # In a file of the current version the old key is an error naming the new one; so is a flag in any file.
    current = tmp_path / "current.yaml"
    current.write_text("version: 2\ntune:\n  max_seq_len: [16]\n")
    with pytest.raises(ConfigError, match="tune.max_seq_len is now tune.max_seq_lens"):
        load_config(current)
    with pytest.raises(ConfigError, match="tune.max_seq_len is now tune.max_seq_lens"):
        load_config(old, ["tune.max_seq_len=[8]"])
    newer = tmp_path / "newer.yaml"
    newer.write_text("version: 3\nname: x\n")
    with pytest.raises(ConfigError, match=f"^{newer}: version: 3: written for a newer genrec \\(this one reads config "
                                          "versions 1 to 2\\); upgrade genrec"):
        load_config(newer)
    for bad in ("version: 0", "version: two", "version: true"):
        (tmp_path / "bad.yaml").write_text(bad + "\n")
        with pytest.raises(ConfigError, match="version: .*expected a config format version, 1 to 2"):
            load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="version"):  # a flag may not claim another version
        load_config(None, ["version=1"])
