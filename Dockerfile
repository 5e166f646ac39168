# syntax=docker/dockerfile:1
# vit-serve. CPU image by default; for NVIDIA GPUs build with
#   --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG PYTHON=3.11

FROM python:${PYTHON}-slim AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# Dependencies in their own layer, before the code.
RUN pip install --index-url "${TORCH_INDEX}" torch==2.13.0
COPY pyproject.toml README.md ./
RUN pip install "fastapi>=0.115" "starlette>=0.40" "python-multipart>=0.0.18" "uvicorn[standard]>=0.30" \
        "pydantic>=2.7" "pydantic-settings>=2.3" "prometheus-client>=0.20" "pillow>=10.3" \
        "safetensors>=0.4.3" "numpy>=1.26" "tqdm>=4.66"
COPY model ./model
COPY service ./service
RUN pip install --no-deps .

FROM python:${PYTHON}-slim
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 VIT_HOST=0.0.0.0 VIT_PORT=8000
RUN useradd --create-home --uid 10001 vit
USER vit
WORKDIR /home/vit
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz').status != 200)"
ENTRYPOINT ["vit-serve"]
