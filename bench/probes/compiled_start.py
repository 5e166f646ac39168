"""`python -m bench.probes.compiled_start`: how long a compiled server takes to be ready, first with
an empty compile cache, then as a new pod or container starts: an empty temp directory, and the
cache volume (VIT_COMPILE_CACHE_DIR) the first start filled.

Starts `python -m service` `--starts` times with `--model` and `--env` (default: ViT-S/16 in int8),
each with a temp directory of its own and all with one fresh cache directory, and prints for each
its time to ready, the files it added to the cache, and the compile time of each batch size from
its log.

    python -m bench.probes.compiled_start --starts 3
    python -m bench.probes.compiled_start --env VIT_COMPILE=true,VIT_DTYPE=float32 --model vit_test_tiny
"""

from __future__ import annotations

import argparse
import datetime
import re
import tempfile
from pathlib import Path

from bench.harness import machine, vit_serve


def cache_files(root: Path) -> set[Path]:
    """The files of a compile cache (lock files aside), relative to it."""
    return {path.relative_to(root) for path in root.rglob("*") if path.is_file() and "locks" not in path.parts}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.probes.compiled_start", description=__doc__)
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--env", default="VIT_QUANTIZE=int8", help="more VIT_* settings: NAME=value,…")
    parser.add_argument("--starts", type=int, default=3, help="the first with an empty cache, then with it")
    args = parser.parse_args(argv)
    settings = dict(item.split("=", 1) for item in args.env.split(",") if item)
    print(f"{machine()}, {datetime.date.today()}: {args.model} with {settings}")
    with tempfile.TemporaryDirectory() as root:
        cache = Path(root) / "cache"
        for start in range(args.starts):
            temp = Path(root) / f"tmp{start}"
            temp.mkdir()
            before = cache_files(cache)
            env = {"VIT_MODEL": args.model, "VIT_LOG_LEVEL": "info", **settings}
            env |= {"VIT_COMPILE_CACHE_DIR": str(cache), "TMPDIR": str(temp)}
            with vit_serve(env) as server:
                pass
            buckets = re.findall(r"compiled batch size (\d+) \(\d+ of \d+\) in ([\d.]+) s", server.log)
            shown = ", ".join(f"{size}: {seconds} s" for size, seconds in buckets)
            print(
                f"start {start + 1} ({'empty cache' if start == 0 else 'the cache, an empty temp directory'}):"
                f" ready in {server.ready_s:.1f} s, {len(cache_files(cache) - before)} files added to the cache;"
                f" batch sizes compiled: {shown or 'none (not compiled)'}",
                flush=True,
            )


if __name__ == "__main__":
    main()
