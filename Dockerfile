# syntax=docker/dockerfile:1
# vit-serve: the service with its built-in model, as a non-root user.
#
#   docker build -t vit-serve:cpu .                                              # CPU-only torch
#   docker build -t vit-serve:gpu --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
#   docker build -t vit-serve:ray --build-arg EXTRAS=bulk,ray …                   # a RayJob's image
#
# The CUDA wheels carry their own CUDA runtime: a GPU host needs only the NVIDIA driver and
# the NVIDIA container toolkit (`docker run --gpus all …`). Settings are VIT_* variables.
ARG PYTHON=3.11
# Any image with Python ${PYTHON} and venv at /usr/bin or /usr/local/bin (CI builds one with debootstrap:
# bench/container.py, as no registry is reachable there).
ARG BASE=python:${PYTHON}-slim

FROM ${BASE} AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
# Dependencies in their own layers, before the code: torch (the big one), then the rest, read
# from pyproject.toml so that the list exists in one place.
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md ./
# Optional extras, comma-separated (EXTRAS=bulk,ray: the image of a RayJob, deploy/ray/); none by default.
ARG EXTRAS=""
RUN python -c "import os, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extras = [e for e in os.environ['EXTRAS'].split(',') if e]; \
print('\n'.join(p['dependencies'] + [d for e in extras for d in p['optional-dependencies'][e]]))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt
COPY model ./model
COPY service ./service
RUN pip install --no-deps .

FROM ${BASE}
COPY --from=build /opt/venv /opt/venv
# Compiled graphs (CUDA's default, int8) are kept in /var/cache/vit-serve: mount a volume there and
# a new container finds what an earlier one compiled (docs/DEPLOY.md, Compiled start-up).
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 VIT_HOST=0.0.0.0 VIT_PORT=8000 \
    VIT_COMPILE_CACHE_DIR=/var/cache/vit-serve
RUN useradd --create-home --uid 10001 vit \
    && mkdir -p /var/cache/vit-serve && chown 10001:10001 /var/cache/vit-serve
USER 10001
WORKDIR /home/vit
EXPOSE 8000
# Readiness, not liveness: Docker (and compose's depends_on) should route only to a warm model.
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status != 200)"]
ENTRYPOINT ["vit-serve"]
