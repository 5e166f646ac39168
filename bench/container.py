"""`python -m bench.container`: the repository's Dockerfile built and run as a user's Docker would,
under podman (daemonless, from Debian's packages: CI's machines have no Docker engine and reach no
container registry), and what that costs: build time, image size, time to healthy, time to drain.
tests/deploy/test_container.py asserts the container's behaviour with the same functions.

The build is hermetic: the base image is Debian bookworm's minimal root with its Python 3.11 (made by
debootstrap, the content of python:3.11-slim without its registry), passed as the Dockerfile's BASE
argument; the build runs with no network and installs only the wheels `pip download` fetched
beforehand, mounted read-only with a pip config that allows nothing else. Podman's settings for a
host without systemd are deploy/podman/containers.conf. Base image and wheels are cached in
~/.cache/vit-serve/container; podman keeps the image's layers.

    python -m bench.container --out bench-results
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.harness import free_port, machine

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "deploy" / "podman" / "containers.conf"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vit-serve" / "container"
PYTHON = "3.11"  # bookworm's Python, and the wheels' ABI
BASE = "localhost/vit-serve-base:bookworm"
IMAGE = "localhost/vit-serve:ci"
# Inside the build, the wheels and pip's config are one folder mounted as root's home (pip reads
# ~/.config/pip/pip.conf): a path the base image already has, so no empty mount point is committed.
MOUNT_AT = "/root"
PACKAGES = ["podman", "runc", "debootstrap"]


def podman(*args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess[str]:
    """podman with this repository's settings; raises with its stderr when `check` and it fails."""
    env = {**os.environ, "CONTAINERS_CONF": str(CONF)}
    result = subprocess.run(["podman", *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)} exited {result.returncode}: {result.stderr[-2000:]}")
    return result


def unavailable() -> str | None:
    """Why no container can be built and run on this host, or None when one can."""
    missing = [name for name in PACKAGES if shutil.which(name) is None]
    if missing:
        return f"{', '.join(missing)} not installed (Debian: apt-get install {' '.join(PACKAGES)}; .ci/run does)"
    if os.geteuid() != 0:
        return "debootstrap, which makes the base image, needs root"
    info = podman("info", "--format", "{{.Host.OCIRuntime.Name}}", check=False, timeout=60)
    if info.returncode != 0:
        return f"podman cannot run here: {info.stderr.strip()[-500:]}"
    return None


def base_image() -> float:
    """Debian bookworm's minimal root with Python, as the image BASE; seconds taken (0 when it exists)."""
    if podman("image", "exists", BASE, check=False).returncode == 0:
        return 0.0
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        subprocess.run(
            ["debootstrap", "--variant=minbase", "--include=python3,python3-venv,python-is-python3", "bookworm", root],
            check=True,
            capture_output=True,
            timeout=900,
        )
        for path in ["var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/locale"]:
            shutil.rmtree(root / path)
        # An imported image has no environment: without PATH, the Dockerfile's PATH=/opt/venv/bin:$PATH
        # would lose the system's.
        path = "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        with subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE) as tar:  # closes its pipe
            imported = subprocess.run(
                ["podman", "import", "--change", path, "-", BASE],
                stdin=tar.stdout,
                env={**os.environ, "CONTAINERS_CONF": str(CONF)},
                capture_output=True,
                timeout=300,
            )
        if imported.returncode != 0 or tar.returncode != 0:
            raise RuntimeError(f"podman import failed: {imported.stderr.decode()[-2000:]}")
    return time.monotonic() - started


def requirements() -> list[str]:
    """What the image installs: the Dockerfile's torch, the project's dependencies, its build backend."""
    torch = re.search(r"^ARG TORCH_VERSION=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M)
    if torch is None:
        raise RuntimeError("the Dockerfile has no ARG TORCH_VERSION")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return [f"torch=={torch.group(1)}", *project["project"]["dependencies"], *project["build-system"]["requires"]]


def wheels() -> Path:
    """A folder of the wheels the build installs, fetched for Python 3.11 on this platform, beside
    the pip config that makes them its only source."""
    home = CACHE / "home"
    (home / ".config" / "pip").mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--dest", str(home / "wheels")]
    subprocess.run(
        [*pip, "--only-binary", ":all:", "--python-version", PYTHON, *requirements()],
        check=True,
        capture_output=True,
        timeout=1800,
    )
    config = f"[global]\nno-index = true\nfind-links = {MOUNT_AT}/wheels\n"
    (home / ".config" / "pip" / "pip.conf").write_text(config)
    return home


def build(no_cache: bool = False) -> float:
    """The Dockerfile built into IMAGE with no network, from BASE and the wheels; seconds taken.
    --format docker keeps the HEALTHCHECK, which the OCI format has no field for."""
    args = ["build", "--network", "none", "--format", "docker", "--build-arg", f"BASE={BASE}"]
    args += ["--build-arg", f"PYTHON={PYTHON}", "-v", f"{wheels()}:{MOUNT_AT}:ro", "-t", IMAGE]
    args += ["--no-cache"] if no_cache else []
    started = time.monotonic()
    podman(*args, str(ROOT))
    return time.monotonic() - started


def inspect(target: str, template: str) -> str:
    return podman("inspect", "--format", template, target).stdout.strip()


@dataclass
class Container:
    name: str
    url: str  # the published port, on 127.0.0.1
    healthy_s: float  # from `podman run` to the image's own HEALTHCHECK passing


@contextlib.contextmanager
def running(*options: str, seconds: float = 120) -> Iterator[Container]:
    """IMAGE started detached with port 8000 published on 127.0.0.1, once its HEALTHCHECK passes
    (run by hand: podman runs it on a systemd timer, and there is no systemd here); removed after."""
    name, port = f"vit-serve-test-{os.getpid()}-{free_port()}", free_port()
    started = time.monotonic()
    podman("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8000", *options, IMAGE)
    try:
        deadline = started + seconds
        while podman("healthcheck", "run", name, check=False, timeout=30).returncode != 0:
            if time.monotonic() > deadline or inspect(name, "{{.State.Status}}") != "running":
                raise RuntimeError(f"{name} not healthy: {podman('logs', name, check=False).stderr[-2000:]}")
            time.sleep(0.2)
        yield Container(name, f"http://127.0.0.1:{port}", time.monotonic() - started)
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)


def stop(container: Container, grace_s: int = 30) -> tuple[float, int]:
    """`podman stop` (SIGTERM, then SIGKILL after `grace_s`): seconds it took, and the exit code."""
    started = time.monotonic()
    podman("stop", "-t", str(grace_s), container.name, timeout=grace_s + 30)
    return time.monotonic() - started, int(inspect(container.name, "{{.State.ExitCode}}"))


def classify(url: str, image: Path) -> str:
    """The top label the container gives `image`."""
    answer = httpx.post(f"{url}/v1/classify", content=image.read_bytes(), headers={"content-type": "image/png"})
    answer.raise_for_status()
    return str(answer.json()["results"][0]["predictions"][0]["label"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.container", description=__doc__)
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--out", type=Path, help="a folder for container.json")
    args = parser.parse_args(argv)
    if reason := unavailable():
        raise SystemExit(reason)
    figures: dict[str, object] = {"machine": machine(), "date": str(datetime.date.today())}
    figures["base_image_s"] = base_image()
    figures["build_cold_s"] = build(no_cache=True)
    figures["build_cached_s"] = build()
    figures["image_mb"] = int(inspect(IMAGE, "{{.Size}}")) / 1e6
    healthy, drains = [], []
    for _ in range(args.starts):
        with running() as container:
            healthy.append(round(container.healthy_s, 2))
            drains.append(round(stop(container)[0], 2))
    figures |= {"healthy_s": healthy, "stop_s": drains}
    print(json.dumps(figures, indent=2))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "container.json").write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
