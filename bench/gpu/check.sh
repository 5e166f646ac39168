#!/usr/bin/env bash
# The GPU check kit on a CUDA host without network: install the wheels bench/gpu/wheels.sh
# fetched (into a folder of their own, not the image's site-packages), check that the service
# imports, then run `python -m bench.kit` from the repository root. docs/DEPLOY.md has the steps.
# Usage: bench/gpu/check.sh OUT [WHEELS]   (WHEELS default .whl; more arguments go to bench.kit)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:?usage: bench/gpu/check.sh OUT [WHEELS] [bench.kit arguments]}
wheels=${2:-.whl}
shift $(($# < 2 ? $# : 2))
python=${PYTHON:-python3}
site=$(mktemp -d)
"$python" -m pip install -q --no-index --no-deps --target "$site" "$wheels"/*.whl
export PYTHONPATH="$site:$PWD" PYTHONUNBUFFERED=1
"$python" -c 'import service.app, service.http.server, service.decoding, model.vit, bench.kit'  # every dependency is there, before any step
exec "$python" -m bench.kit --out "$out" "$@"
