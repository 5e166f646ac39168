"""The image built from the repository's Dockerfile and run as a user's container engine runs it
(podman, hermetically: bench/container.py), and deploy/k8s/deployment.yaml played by `podman kube
play`: the non-root start, the HEALTHCHECK, serving over a published port, the pod's security
context, and the drain on SIGTERM."""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from bench import container
from bench.harness import free_port

pytestmark = pytest.mark.slow

DIGIT_7 = Path(__file__).resolve().parents[2] / "examples" / "digits" / "digit-7-3539.png"


@pytest.fixture(scope="module")
def image() -> str:
    if reason := container.unavailable():
        pytest.skip(reason)
    container.base_image()
    container.build()
    return container.IMAGE


def status(name: str, pid: int = 1) -> dict[str, str]:
    """/proc/`pid`/status inside the container `name`, as a dict."""
    text = container.podman("exec", name, "cat", f"/proc/{pid}/status").stdout
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def test_the_image_keeps_its_healthcheck_and_user(image: str) -> None:
    assert "/readyz" in container.inspect(image, "{{json .HealthCheck.Test}}")
    assert container.inspect(image, "{{.Config.User}}") == "10001"


def test_it_becomes_healthy_and_classifies_over_a_published_port_as_uid_10001(image: str) -> None:
    with container.running() as started:
        assert container.inspect(started.name, "{{.State.Health.Status}}") == "healthy"
        assert container.classify(started.url, DIGIT_7) == "7"
        assert httpx.get(f"{started.url}/healthz").status_code == 200
        assert status(started.name)["Uid"].split() == ["10001"] * 4  # real, effective, saved, filesystem


def test_stop_drains_and_exits_0(image: str) -> None:
    with container.running() as started:
        seconds, code = container.stop(started)
        log = container.podman("logs", started.name).stderr
    assert code == 0, log[-2000:]  # not 137: it exited by itself, well before podman's SIGKILL
    assert seconds < 10
    assert "drained the queue" in log


def playable(deployment: dict[str, Any], port: int) -> dict[str, Any]:
    """The Deployment as podman can play it on a CPU host: this image, one replica, no GPU, the port
    published on 127.0.0.1. Podman 4.3 turns an httpGet liveness probe on a named port into a curl
    the image does not have, and ignores the startup and readiness probes and preStop: those are
    dropped here, and checked only as configuration (tests/deploy/test_deploy.py)."""
    played = copy.deepcopy(deployment)
    played["spec"]["replicas"] = 1
    spec = played["spec"]["template"]["spec"]
    (main,) = spec["containers"]
    main["image"] = container.IMAGE
    main["env"] = [var for var in main["env"] if var["name"] not in {"VIT_DEVICE", "VIT_WORKERS"}]
    del main["resources"]["limits"]["nvidia.com/gpu"]
    for key in ["livenessProbe", "readinessProbe", "startupProbe", "lifecycle"]:
        del main[key]
    main["ports"][0] |= {"hostPort": port, "hostIP": "127.0.0.1"}
    return played


@pytest.fixture
def pod(image: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """deploy/k8s/deployment.yaml played; (its container's name, its URL) once it serves."""
    source = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "deployment.yaml"
    port = free_port()
    manifest = tmp_path / "deployment.yaml"
    manifest.write_text(yaml.safe_dump(playable(yaml.safe_load(source.read_text()), port)))
    container.podman("kube", "play", str(manifest), timeout=300)
    try:
        yield "vit-serve-pod-0-vit-serve", f"http://127.0.0.1:{port}"
    finally:
        container.podman("kube", "down", str(manifest), check=False)
        container.podman("volume", "rm", "-f", "vit-serve-compile-cache", check=False)


def wait_ready(url: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise AssertionError(f"{url}/readyz did not answer 200 within {seconds} s")


def test_the_kubernetes_deployment_runs_confined_and_drains(pod: tuple[str, str]) -> None:
    name, url = pod
    wait_ready(url)
    assert container.classify(url, DIGIT_7) == "7"
    process = status(name)
    assert process["Uid"].split() == ["10001"] * 4
    assert int(process["CapEff"], 16) == 0  # capabilities: drop ALL
    assert process["NoNewPrivs"].strip() == "1"  # allowPrivilegeEscalation: false
    assert process["Seccomp"].strip() == "2"  # seccompProfile: RuntimeDefault (filter mode)
    root = container.podman("exec", name, "touch", "/home/vit/written", check=False)
    assert "Read-only file system" in root.stderr  # readOnlyRootFilesystem
    container.podman("exec", name, "touch", "/tmp/written", "/var/cache/vit-serve/written")  # the two volumes
    container.podman("pod", "stop", "-t", "30", "vit-serve-pod-0")
    assert container.inspect(name, "{{.State.ExitCode}}") == "0"
    assert "drained the queue" in container.podman("logs", name).stderr
