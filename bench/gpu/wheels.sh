#!/usr/bin/env bash
# The GPU check kit's wheels: on a machine with network access, fetch for CPython 3.12 on x86-64
# Linux the service's dependencies that a CUDA image with torch, transformers, Pillow, httpx,
# pytest, safetensors and prometheus-client lacks (its web stack), at the versions installed in
# this environment where there are some (what the suite was run with), else the newest.
# Usage: bench/gpu/wheels.sh [DIR]   (default .whl, which .gitignore ignores; about 10 MB)
set -euo pipefail
dir=${1:-.whl}
python=${PYTHON:-python3}
[[ -x .venv/bin/python ]] && python=.venv/bin/python
# what the kit needs beyond such an image: fastapi's stack, uvicorn's fast parser, the settings,
# simplejpeg, the offline /docs assets and pytest-asyncio for the CUDA tests; typing-extensions and
# anyio at versions new enough for pydantic and fastapi; torchao for the int8 engine test
needed=(fastapi starlette python-multipart uvicorn httptools pydantic pydantic-core pydantic-settings
  python-dotenv annotated-types typing-inspection typing-extensions anyio annotated-doc opentelemetry-api h11 click
  simplejpeg fastapi-offline pytest-asyncio torchao)
mapfile -t reqs < <("$python" - "${needed[@]}" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version
for name in sys.argv[1:]:
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        print(name)
PY
)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$python" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d "$tmp" "${reqs[@]}"
mkdir -p "$dir"
for name in "${needed[@]}"; do  # only these: their other dependencies are on the image already
  cp "$tmp"/"${name//-/_}"-[0-9]*.whl "$dir"/
done
ls "$dir"
du -sh "$dir"
