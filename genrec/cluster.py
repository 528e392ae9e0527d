"""Cluster files rendered from the one deployment config: `genrec cluster render CONFIG OUT_DIR`.

Everything here is a pure function of the config (no Ray, no network), so the rendered files can be diffed,
committed and checked against the validators Ray itself runs:

    ray-cluster.yaml      `ray up` cluster launcher file: head, CPU workers for Ray Data, GPU workers for training
    runtime-env.yaml      `ray job submit --runtime-env ...`: what the job uploads (and leaves out) and installs
    rayjob-pretrain.yaml  KubeRay RayJob: pre-training on a cluster created for the job
    rayjob-sweep.yaml     KubeRay RayJob: the Tune sweep
    serve-config.yaml     the Serve config of the winner (what `serve build` writes, what `serve deploy` takes)
    rayservice.yaml       KubeRay RayService: the same Serve config as serveConfigV2, on a long-lived cluster
    networkpolicy.yaml    Kubernetes NetworkPolicy: the head's dashboard (and Jobs API) reachable only from the
                          KubeRay operator and the cluster's own pods

Every KubeRay cluster runs Ray's token authentication through KubeRay's authOptions (KubeRay 1.5.1 or later,
`cluster.kuberay_version`): the operator makes the Secret, sets RAY_AUTH_MODE/RAY_AUTH_TOKEN in every Ray container
and uses the token itself when it talks to the dashboard.

Targets: Ray 2.60 (`cluster.ray_version`) and KubeRay's v1 CRDs (apiVersion ray.io/v1, KubeRay 1.5.1+ for authOptions).
"""

from __future__ import annotations

import math
import shlex
from pathlib import Path

import yaml

from genrec.config import ClusterConfig, ConfigError, GenrecConfig, NodeGroupConfig
from genrec.ray_session import WORKER_ENV
from genrec.storage import atomic_write_bytes

KUBERAY_API = "ray.io/v1"
APP_IMPORT_PATH = "serving.app:app"
DEPLOYMENT = "Recommender"  # the deployment class in serving/app.py
HEAD_GROUP = "head"  # the name KubeRay's autoscaler gives the head group
FILES = ("ray-cluster.yaml", "runtime-env.yaml", "rayjob-pretrain.yaml", "rayjob-sweep.yaml", "serve-config.yaml",
         "rayservice.yaml", "networkpolicy.yaml")
CLUSTER_LABEL = "genrec.io/cluster"  # on every pod of the rendered clusters: what the NetworkPolicy selects
OPERATOR_LABELS = {"app.kubernetes.io/name": "kuberay-operator"}  # the operator's pods, as its Helm chart labels them
DASHBOARD_PORT = 8265


def _cluster(cfg: GenrecConfig) -> ClusterConfig:
    if cfg.cluster is None:
        raise ConfigError("this config has no `cluster:` section; start from cluster/genrec.yaml, which describes "
                          "the head, CPU and GPU node groups to render")
    return cfg.cluster


def entrypoint(module: str, config_path: str) -> str:
    return f"python -m {module} --config {shlex.quote(config_path)}"


def runtime_env(cfg: GenrecConfig, working_dir: str = ".") -> dict:
    """The job's runtime environment: the repository as the working dir (without venv, data and results), the
    pip packages the workers need on top of the Ray image, the environment a local session's workers get
    (genrec.ray_session.WORKER_ENV), and CPU DeepSpeed where a worker has no GPU."""
    c = _cluster(cfg)
    env = {"working_dir": working_dir, "env_vars": dict(WORKER_ENV)}
    if c.pip:  # empty: the nodes' Python already has genrec's dependencies (a local head, a custom image)
        env["pip"] = list(c.pip)
    if working_dir == ".":
        env["excludes"] = list(c.excludes)
    if not cfg.train.gpus_per_worker:
        env["env_vars"]["DS_ACCELERATOR"] = "cpu"
    return env


def shared_mount(cfg: GenrecConfig) -> bool:
    """Whether the nodes need the shared folder at cluster.storage_mount: a folder storage.root lives there; with a
    URI storage.root (every node reads the object store itself) only raw data placed under it does."""
    c = _cluster(cfg)
    if not cfg.storage.remote:
        return True
    path = (cfg.data.path or "").rstrip("/") + "/"
    return cfg.data.source != "synthetic" and path.startswith(c.storage_mount.rstrip("/") + "/")


def gpu_nodes_needed(cfg: GenrecConfig) -> int:
    """GPU nodes one training run occupies (train.workers x train.gpus_per_worker over the node's GPUs)."""
    t, g = cfg.train, _cluster(cfg).gpu_workers
    if not t.gpus_per_worker or not g.gpus:
        return 0
    return math.ceil(t.workers / int(g.gpus // t.gpus_per_worker))


# ------------------------------------------------------------------------------------------- ray up (VMs)

def _node_type(group: NodeGroupConfig) -> dict:
    resources = {"CPU": group.cpus} | ({"GPU": group.gpus} if group.gpus else {})
    return {"node_config": {"InstanceType": group.instance_type}, "resources": resources,
            "min_workers": group.min_workers, "max_workers": group.max_workers}


def ray_up_config(cfg: GenrecConfig) -> dict:
    """A cluster launcher file for `ray up`. Node types: head (no training: it runs the drivers and Ray Data's
    coordinator), cpu_workers (Ray Data read and windowing tasks), gpu_workers (the Ray Train workers)."""
    c = _cluster(cfg)
    mount = shared_mount(cfg)
    if mount and not c.storage_nfs:
        raise ConfigError("cluster.storage_nfs: `ray up` VMs share shards, checkpoints and manifests (and data under "
                          "cluster.storage_mount) through an NFS export (e.g. EFS: fs-0123.efs.us-west-2.amazonaws.com:/)"
                          " mounted at cluster.storage_mount; set it to render ray-cluster.yaml, or put storage.root "
                          "on an object store (s3://...)")
    # The training run's GPU nodes stay up: genrec checks before a run that the cluster has room for its workers
    # and for Ray Data, which counts running nodes only.
    need = min(gpu_nodes_needed(cfg), c.gpu_workers.max_workers)
    gpu = c.gpu_workers.model_copy(update={"min_workers": max(c.gpu_workers.min_workers, need)})
    types = {"head": _node_type(c.head) | {"min_workers": 0, "max_workers": 0}}
    if c.cpu_workers.max_workers:
        types["cpu_workers"] = _node_type(c.cpu_workers)
    if gpu.max_workers:
        types["gpu_workers"] = _node_type(gpu)
    setup = [f"pip install -q 'ray[default,train,tune,serve]=={c.ray_version}' " +
             " ".join(shlex.quote(p) for p in c.pip)]
    if mount:
        mount, nfs = shlex.quote(c.storage_mount), shlex.quote(c.storage_nfs)
        setup = [f"sudo mkdir -p {mount} && (mountpoint -q {mount} || sudo mount -t nfs4 -o nfsvers=4.1 {nfs} "
                 f"{mount}) && sudo chmod 777 {mount}"] + setup
    return {
        "cluster_name": c.name,
        "max_workers": sum(t["max_workers"] for t in types.values()),
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 10,
        "provider": dict(c.provider),
        "auth": {"ssh_user": c.ssh_user},
        "available_node_types": types,
        "head_node_type": "head",
        "setup_commands": setup,
        # The dashboard (and the Jobs API behind it) listens on the head only; reach it with `ray dashboard` (SSH).
        "head_start_ray_commands": [
            "ray stop",
            "ray start --head --port=6379 --dashboard-host=127.0.0.1 --object-manager-port=8076 "
            "--autoscaling-config=~/ray_bootstrap_config.yaml"],
        "worker_start_ray_commands": ["ray stop", "ray start --address=$RAY_HEAD_IP:6379 --object-manager-port=8076"],
    }


# ------------------------------------------------------------------------------------------- KubeRay

def pod_size(group: NodeGroupConfig) -> tuple[int, int]:
    """(CPUs, GiB) one pod asks for on a node of this group: a node's allocatable share is below its raw size
    (kubelet, system daemons), so a pod the size of the machine would stay Pending. One CPU and 10% of memory
    are left to the node."""
    return max(1, group.cpus - 1), max(1, int(group.memory_gb * 0.9))


def _container(name: str, image: str, group: NodeGroupConfig, c: ClusterConfig, ports: list[dict] | None = None
               ) -> dict:
    cpus, mem = pod_size(group)
    limits = {"cpu": str(cpus), "memory": f"{mem}Gi"}
    if group.gpus:
        limits["nvidia.com/gpu"] = str(group.gpus)
    # /dev/shm in memory: the default 64 MB slows the object store and breaks NCCL between the GPUs of one pod.
    mounts = [{"name": "shm", "mountPath": "/dev/shm"}]
    if c.storage_pvc:  # as in _pod
        mounts.insert(0, {"name": "storage", "mountPath": c.storage_mount})
    container = {"name": name, "image": image, "resources": {"limits": dict(limits), "requests": dict(limits)},
                 "volumeMounts": mounts}
    if ports:
        container["ports"] = ports
    return container


def _pod(container: dict, c: ClusterConfig) -> dict:
    volumes = [{"name": "shm", "emptyDir": {"medium": "Memory"}}]
    if c.storage_pvc:  # None when nothing lives on the mount (a URI storage root: every pod reads the store itself)
        volumes.insert(0, {"name": "storage", "persistentVolumeClaim": {"claimName": c.storage_pvc}})
    return {"metadata": {"labels": {CLUSTER_LABEL: c.name}}, "spec": {"containers": [container], "volumes": volumes}}


def raycluster_spec(cfg: GenrecConfig, for_training: bool) -> dict:
    """A KubeRay RayCluster spec (the `rayClusterSpec` of a RayJob, the `rayClusterConfig` of a RayService). A
    training job's cluster starts with the GPU nodes the run needs (waiting for the autoscaler would idle the
    rest); a serving cluster keeps the configured minimum."""
    c = _cluster(cfg)
    if not shared_mount(cfg):  # a URI storage root and no data under the mount: the pods mount no claim
        c = c.model_copy(update={"storage_pvc": None})
    elif not c.storage_pvc:
        raise ConfigError(f"cluster.storage_pvc is null but data.path={cfg.data.path} lies under "
                          f"cluster.storage_mount={c.storage_mount}: name the claim that holds it")
    ports = [{"containerPort": 6379, "name": "gcs-server"}, {"containerPort": DASHBOARD_PORT, "name": "dashboard"},
             {"containerPort": 10001, "name": "client"}, {"containerPort": cfg.serve.port, "name": "serve"}]
    # The head runs drivers and coordinators, never a training worker or a replica: num-cpus 0 keeps them off it.
    head = {"rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
            "template": _pod(_container("ray-head", c.image, c.head, c, ports), c)}
    groups = []
    for name, group, image in (("cpu-workers", c.cpu_workers, c.image), ("gpu-workers", c.gpu_workers, c.gpu_image)):
        if not group.max_workers:
            continue
        need = gpu_nodes_needed(cfg) if group.gpus and for_training else 0
        lo = max(group.min_workers, min(need, group.max_workers))
        groups.append({"groupName": name, "replicas": lo, "minReplicas": lo, "maxReplicas": group.max_workers,
                       "rayStartParams": {}, "template": _pod(_container("ray-worker", image, group, c), c)})
    spec = {"rayVersion": c.ray_version, "enableInTreeAutoscaling": True, "headGroupSpec": head,
            "workerGroupSpecs": groups}
    # The dashboard runs the Jobs API (arbitrary code): every request needs Ray's token. The operator makes the
    # Secret and gives it to the Ray containers and to itself (config.py refuses an operator without authOptions).
    return {**spec, "authOptions": {"mode": "token"}}


def network_policy(cfg: GenrecConfig) -> dict:
    """The head pods' ingress: the dashboard port (Jobs API, Serve's REST API) from the KubeRay operator and the
    cluster's own pods only; the cluster's pods on every port (GCS, client, object transfers); the Serve port from
    anywhere (the endpoint exists to be reached; its routes that read or change user state want the serve token).
    KubeRay's operator talks to the dashboard through the head Service, so binding it to 127.0.0.1 would break
    RayJob and RayService: the policy closes it instead."""
    c = _cluster(cfg)
    own = {"podSelector": {"matchLabels": {CLUSTER_LABEL: c.name}}}
    operator = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": c.operator_namespace}},
                "podSelector": {"matchLabels": dict(OPERATOR_LABELS)}}
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": f"{c.name}-head", "namespace": c.namespace},
            "spec": {"podSelector": {"matchLabels": {CLUSTER_LABEL: c.name, "ray.io/node-type": "head"}},
                     "policyTypes": ["Ingress"],
                     "ingress": [{"from": [own]},
                                 {"from": [operator], "ports": [{"protocol": "TCP", "port": DASHBOARD_PORT}]},
                                 {"ports": [{"protocol": "TCP", "port": cfg.serve.port}]}]}}


def _runtime_env_yaml(cfg: GenrecConfig) -> str:
    return yaml.safe_dump(runtime_env(cfg, working_dir=_cluster(cfg).code_uri), sort_keys=False)


def rayjob(cfg: GenrecConfig, name: str, module: str, config_path: str) -> dict:
    return _kuberay(cfg, "RayJob", name, {
        "entrypoint": entrypoint(module, config_path),
        "runtimeEnvYAML": _runtime_env_yaml(cfg),
        # The operator submits the job over HTTP itself: the default K8sJobMode runs `ray job submit` from a pod of
        # its own, which the NetworkPolicy (operator and cluster pods only) would keep from the dashboard.
        "submissionMode": "HTTPMode",
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": 600,
        "rayClusterSpec": raycluster_spec(cfg, for_training=True),
    })


def _kuberay(cfg: GenrecConfig, kind: str, name: str, spec: dict) -> dict:
    """A KubeRay v1 resource named <cluster.name>-<name> in the configured namespace."""
    c = _cluster(cfg)
    return {"apiVersion": KUBERAY_API, "kind": kind,
            "metadata": {"name": f"{c.name}-{name}", "namespace": c.namespace}, "spec": spec}


def serve_config(cfg: GenrecConfig, config_path: str, working_dir: str | None = None) -> dict:
    """The Serve config of the genrec app (ServeDeploySchema): the app builder reads the same deployment config,
    so the winner manifest under storage.root picks the checkpoint; the deployment's options come from `serve:`."""
    env = runtime_env(cfg, working_dir=working_dir or _cluster(cfg).code_uri)
    env.pop("excludes", None)
    opts = cfg.serve.deployment_options()
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": cfg.serve.host, "port": cfg.serve.port},
        "applications": [{
            "name": "genrec",
            "route_prefix": "/",
            "import_path": APP_IMPORT_PATH,
            "args": {"config": config_path},
            "runtime_env": env,
            "deployments": [{"name": DEPLOYMENT, **opts}],
        }],
    }


def rayservice(cfg: GenrecConfig, config_path: str) -> dict:
    return _kuberay(cfg, "RayService", "serve", {
        "serveConfigV2": yaml.safe_dump(serve_config(cfg, config_path), sort_keys=False),
        "rayClusterConfig": raycluster_spec(cfg, for_training=False),
    })


def render(cfg: GenrecConfig, config_path: str) -> dict[str, dict]:
    """Every cluster file, by file name. `config_path` is the config as the cluster sees it (relative to the
    job's working dir, e.g. cluster/genrec.yaml)."""
    return {
        "ray-cluster.yaml": ray_up_config(cfg),
        "runtime-env.yaml": runtime_env(cfg),
        "rayjob-pretrain.yaml": rayjob(cfg, "pretrain", "trainers.pretrain", config_path),
        "rayjob-sweep.yaml": rayjob(cfg, "sweep", "tuning.sweep", config_path),
        "serve-config.yaml": serve_config(cfg, config_path),
        "rayservice.yaml": rayservice(cfg, config_path),
        "networkpolicy.yaml": network_policy(cfg),
    }


HEADER = """\
# Rendered by `genrec cluster render {config} {out}` from {config}: edit that file, not this one.
# Targets Ray {ray} and KubeRay's {api} CRDs. {usage}
"""

USAGE = {
    "ray-cluster.yaml": "Use: ray up {out}/ray-cluster.yaml",
    "runtime-env.yaml": "Use: ray job submit --runtime-env {out}/runtime-env.yaml -- python -m trainers.pretrain "
                        "--config {config}",
    "rayjob-pretrain.yaml": "Use: kubectl apply -f {out}/rayjob-pretrain.yaml",
    "rayjob-sweep.yaml": "Use: kubectl apply -f {out}/rayjob-sweep.yaml",
    "serve-config.yaml": "Use: serve deploy {out}/serve-config.yaml (against a running cluster's dashboard)",
    "rayservice.yaml": "Use: kubectl apply -f {out}/rayservice.yaml",
    "networkpolicy.yaml": "Use: kubectl apply -f {out}/networkpolicy.yaml (needs a CNI that enforces policies)",
}


def write(cfg: GenrecConfig, config_path: str, out_dir: str | Path) -> list[Path]:
    """Render every file into out_dir (each written atomically), with a header naming its source and use."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    c = _cluster(cfg)
    paths = []
    for name, doc in render(cfg, config_path).items():
        fmt = {"config": config_path, "out": out.as_posix(), "ray": c.ray_version, "api": KUBERAY_API}
        text = HEADER.format(**fmt, usage=USAGE[name].format(**fmt)) + yaml.safe_dump(doc, sort_keys=False)
        atomic_write_bytes(out / name, text.encode())
        paths.append(out / name)
    return paths
