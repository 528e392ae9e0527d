"""Cluster files rendered from cluster/genrec.yaml, checked with the validators Ray 2.60 itself runs.

- `ray up` file: `prepare_config` + `validate_config` (ray/autoscaler/ray-schema.json), what `ray up` calls.
- KubeRay RayCluster specs (inside the RayJobs and the RayService): Ray's KubeRay autoscaler derives its config
  from them (`_derive_autoscaling_config_from_ray_cr`, which validates the result against the same schema).
- Serve config (serve-config.yaml and the RayService's serveConfigV2): `ray.serve.schema.ServeDeploySchema`.
- Runtime environment: `ray.runtime_env.RuntimeEnv`.
The KubeRay CRD schemas are not installable here: the fields KubeRay v1 (ray.io/v1, 1.5.1+) requires are checked by
hand below. These are private Ray modules: the tests pin Ray 2.60 (pyproject.toml) and would need a look on upgrade.
"""

import tomllib
from pathlib import Path

import pytest
import yaml

from genrec.cluster import FILES, render, write
from genrec.config import ClusterConfig, ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "cluster/genrec.yaml"


@pytest.fixture(scope="module")
def files():
    return render(load_config(ROOT / CONFIG), CONFIG)


def test_committed_rendered_files_are_current(tmp_path):
    """cluster/rendered/ is exactly what `genrec cluster render cluster/genrec.yaml cluster/rendered` writes."""
    write(load_config(ROOT / CONFIG), CONFIG, tmp_path / "cluster" / "rendered")
    for name in FILES:
        fresh = (tmp_path / "cluster" / "rendered" / name).read_text()
        fresh = fresh.replace((tmp_path / "cluster" / "rendered").as_posix(), "cluster/rendered")
        assert (ROOT / "cluster" / "rendered" / name).read_text() == fresh, \
            f"cluster/rendered/{name} is stale: run `genrec cluster render {CONFIG} cluster/rendered`"


def test_ray_up_file_passes_rays_validation(files):
    from ray.autoscaler._private.util import prepare_config, validate_config

    up = files["ray-cluster.yaml"]
    validate_config(prepare_config(up))
    types = up["available_node_types"]
    assert types["gpu_workers"]["resources"] == {"CPU": 192, "GPU": 8} and up["head_node_type"] == "head"
    assert up["max_workers"] == sum(t["max_workers"] for t in types.values())
    # The validator can fail: a key the launcher does not know is refused.
    bad = yaml.safe_load(yaml.safe_dump(up))
    bad["available_node_types"]["gpu_workers"]["gpus"] = 8
    with pytest.raises(Exception, match="Additional properties"):
        validate_config(prepare_config(bad))


def _kuberay_cluster(doc):
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    spec = doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]["rayClusterConfig"]
    # KubeRay v1 RayClusterSpec: rayStartParams is map[string]string; resource quantities are strings.
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())
        (container,) = group["template"]["spec"]["containers"]
        assert all(isinstance(v, str) for v in container["resources"]["limits"].values())
    for group in spec["workerGroupSpecs"]:
        assert {"groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"} <= set(group)
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    return _derive_autoscaling_config_from_ray_cr({"metadata": doc["metadata"], "spec": spec})["available_node_types"]


@pytest.mark.parametrize("name", ["rayjob-pretrain.yaml", "rayjob-sweep.yaml"])
def test_rayjobs_are_kuberay_v1_and_sized_from_the_config(files, name):
    job = files[name]
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    module = "trainers.pretrain" if "pretrain" in name else "tuning.sweep"
    assert job["spec"]["entrypoint"] == f"python -m {module} --config {CONFIG}"
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert env["working_dir"].endswith(".zip") and "torch==2.13.0" in env["pip"]
    nodes = _kuberay_cluster(job)
    # train.workers 8 x 1 GPU on 8-GPU nodes: the job's cluster starts with that one GPU node; the head runs no work.
    assert nodes["gpu-workers"]["resources"]["GPU"] == 8 and nodes["gpu-workers"]["min_workers"] == 1
    # Pods leave one CPU and 10% of memory to the node (kubelet), or they would never schedule.
    assert nodes["headgroup"]["resources"]["CPU"] == 0 and nodes["cpu-workers"]["resources"]["CPU"] == 15
    assert nodes["gpu-workers"]["resources"]["memory"] == int(2048 * 0.9) * 2**30


def test_serve_config_and_rayservice_match_serves_schema(files):
    from ray.serve.schema import ServeDeploySchema

    import serving.app

    svc = files["rayservice.yaml"]
    assert svc["apiVersion"] == "ray.io/v1" and svc["kind"] == "RayService"
    embedded = yaml.safe_load(svc["spec"]["serveConfigV2"])  # KubeRay wants it as a YAML string
    assert embedded == files["serve-config.yaml"]
    schema = ServeDeploySchema.model_validate(embedded)
    (app,) = schema.applications
    module, attr = app.import_path.split(":")
    assert module == "serving.app" and callable(getattr(serving.app, attr))
    (dep,) = app.deployments
    assert dep.name == serving.app.Recommender.name  # the deployment the app builds, not a stale name
    assert dep.autoscaling_config == {"min_replicas": 2, "max_replicas": 8, "target_ongoing_requests": 4.0}
    assert dep.ray_actor_options.num_cpus == 2.0 and app.args == {"config": CONFIG}
    # A serving cluster does not hold GPU nodes it does not use.
    assert _kuberay_cluster(svc)["gpu-workers"]["min_workers"] == 0


def test_kuberay_clusters_run_token_auth_and_only_the_operator_reaches_the_dashboard(files):
    """The dashboard (the Jobs API runs arbitrary code) wants Ray's token on every KubeRay cluster, and a
    NetworkPolicy admits only the KubeRay operator and the cluster's own pods to its port on the head."""
    specs = [files["rayjob-pretrain.yaml"]["spec"]["rayClusterSpec"], files["rayjob-sweep.yaml"]["spec"][
        "rayClusterSpec"], files["rayservice.yaml"]["spec"]["rayClusterConfig"]]
    for spec in specs:
        assert spec["authOptions"] == {"mode": "token"}
        assert tuple(int(p) for p in spec["rayVersion"].split(".")) >= (2, 52)  # Ray's token authentication
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            assert group["template"]["metadata"]["labels"] == {"genrec.io/cluster": "genrec"}
    # Jobs are submitted by the operator itself (HTTPMode), not from a submitter pod the policy would keep out.
    assert files["rayjob-pretrain.yaml"]["spec"]["submissionMode"] == "HTTPMode"
    policy = files["networkpolicy.yaml"]
    assert policy["apiVersion"] == "networking.k8s.io/v1" and policy["metadata"]["namespace"] == "genrec"
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"] == {"genrec.io/cluster": "genrec", "ray.io/node-type": "head"}
    assert spec["policyTypes"] == ["Ingress"]
    dashboard = [r for r in spec["ingress"] if any(p["port"] == 8265 for p in r.get("ports", []))]
    (rule,) = dashboard  # one rule names the dashboard port: the operator's, from its namespace
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kuberay-system"}},
                             "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}}]
    open_to_all = [r for r in spec["ingress"] if "from" not in r]  # no source: anyone, so only the Serve port
    assert [p["port"] for r in open_to_all for p in r["ports"]] == [8000]
    own = [r for r in spec["ingress"] if "ports" not in r]  # every port: the cluster's own pods only
    assert own == [{"from": [{"podSelector": {"matchLabels": {"genrec.io/cluster": "genrec"}}}]}]


def test_runtime_env_uploads_the_repo_without_venv_data_or_results(files):
    """What Ray's own packaging would upload for `ray job submit --runtime-env runtime-env.yaml` from the repo root:
    every source file (genrec/data included: an unanchored "data/" would drop it), none of the venv or results."""
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes
    from ray.runtime_env import RuntimeEnv

    env = RuntimeEnv(**files["runtime-env.yaml"])
    assert env["working_dir"] == "."
    uploaded = set()
    _dir_travel(ROOT, [_get_excludes(ROOT, env["excludes"])], lambda p: uploaded.add(p.relative_to(ROOT).as_posix()),
                include_gitignore=True)
    sources = {p.relative_to(ROOT).as_posix() for d in ("genrec", "trainers", "tuning", "serving")
               for p in (ROOT / d).rglob("*.py") if "__pycache__" not in p.parts}
    assert sources <= uploaded and "genrec/data/schema.py" in uploaded, sorted(sources - uploaded)
    assert not any(u.startswith((".venv/", "genrec-runs/", "docs/examples/", ".git/")) for u in uploaded)


def test_worker_packages_are_the_projects_dependencies():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert sorted(d for d in deps if not d.startswith("ray")) == sorted(ClusterConfig().pip)


@pytest.mark.parametrize("override, message", [
    ("train.workers=24", "train.workers=24 x train.gpus_per_worker=1 needs 3 GPU nodes but "
                         "cluster.gpu_workers.max_workers is 2"),
    ("train.gpus_per_worker=16", "train.gpus_per_worker=16 but a cluster.gpu_workers node has 8 GPUs"),
    ("train.cpus_per_worker=32", "train.cpus_per_worker=32 x 8 workers per GPU node exceeds cluster.gpu_workers"),
    ("storage.root=/home/me/runs", "storage.root=/home/me/runs is not under cluster.storage_mount"),
    ("cluster.cpu_workers.min_workers=9", "cluster.cpu_workers: max_workers=4 is below min_workers=9"),
    ("serve.gpus_per_replica=1", None),  # GPU nodes exist: allowed
    ("serve.gpus_per_replica=16", "serve.gpus_per_replica=16 but a cluster.gpu_workers node has 8 GPUs"),
    ("train.workers=2,train.cpus_per_worker=32", None),  # 2 x 32 of a node's 192 CPUs
    ("data.path=data/ml-25m", "data.path=data/ml-25m is not under cluster.storage_mount"),
    ("cluster.name=Genrec_1", "cluster.name"),
    # An archive of a branch changes under a running cluster: the code must be pinned to a commit.
    ("cluster.code_uri=https://github.com/genrec/genrec/archive/refs/heads/main.zip", "cluster.code_uri"),
    ("cluster.code_uri=s3://bucket/genrec-0.3.zip", None),
    # An operator without authOptions cannot talk to a dashboard behind Ray's token.
    ("cluster.kuberay_version=1.4.2", "KubeRay supports from 1.5.1"),
])
def test_impossible_cluster_requests_are_refused_by_key(override, message):
    overrides = override.split(",")
    if message is None:
        load_config(ROOT / CONFIG, overrides)
        return
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / CONFIG, overrides)
    assert message in str(err.value)


def test_render_cli_and_a_config_without_a_cluster(tmp_path, capsys):
    from genrec.cli import main

    assert main(["cluster", "render", str(ROOT / CONFIG), str(tmp_path), "--as-path", CONFIG]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES)
    assert "kubectl apply -f" in capsys.readouterr().out
    assert main(["cluster", "render", str(ROOT / "configs" / "local.yaml"), str(tmp_path / "x"),
                 "--as-path", "configs/local.yaml"]) == 2
    assert "no `cluster:` section" in capsys.readouterr().err
    # A path of this machine would end up in the manifests' entrypoints.
    assert main(["cluster", "render", str(ROOT / CONFIG), str(tmp_path / "y")]) == 2
    assert "give the config relative to the repository root" in capsys.readouterr().err
    # `ray up` VMs need the NFS export that makes storage shared.
    assert main(["cluster", "render", str(ROOT / CONFIG), str(tmp_path / "z"), "--as-path", CONFIG,
                 "--set", "cluster.storage_nfs=null"]) == 2
    assert "cluster.storage_nfs" in capsys.readouterr().err


def test_a_uri_storage_root_renders_clusters_without_shared_storage(tmp_path):
    """storage.root on an object store: no NFS mount on the `ray up` VMs, no claim in the KubeRay pods; the files
    still pass Ray's validators. A folder root without its claim is refused by key."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    # The claim and the export stay named (the defaults): nothing lives on the mount, so nothing is mounted.
    cfg = load_config(ROOT / CONFIG, ["storage.root=s3://my-bucket/genrec", "data.path=/data/ml-25m"])
    files = render(cfg, CONFIG)
    up = files["ray-cluster.yaml"]
    validate_config(prepare_config(up))
    assert not any("mount" in c for c in up["setup_commands"])
    for name in ("rayjob-pretrain.yaml", "rayjob-sweep.yaml", "rayservice.yaml"):
        doc = files[name]
        _kuberay_cluster(doc)
        spec = doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]["rayClusterConfig"]
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            pod = group["template"]["spec"]
            assert [v["name"] for v in pod["volumes"]] == ["shm"]
            assert [m["name"] for m in pod["containers"][0]["volumeMounts"]] == ["shm"]
    with pytest.raises(ConfigError, match="cluster.storage_pvc is null but storage.root=/mnt"):
        load_config(ROOT / CONFIG, ["cluster.storage_pvc=null"])
    # Raw data on the mount still needs it, with a URI root too.
    on_mount = load_config(ROOT / CONFIG, ["storage.root=s3://my-bucket/genrec"])
    assert "mount -t nfs4" in render(on_mount, CONFIG)["ray-cluster.yaml"]["setup_commands"][0]
    with pytest.raises(ConfigError, match="cluster.storage_pvc is null but data.path=/mnt/cluster_storage/data"):
        render(load_config(ROOT / CONFIG, ["storage.root=s3://my-bucket/genrec", "cluster.storage_pvc=null"]), CONFIG)
