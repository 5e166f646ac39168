"""`vit-serve` (also `python -m service`): serve, or `vit-serve embed SOURCE --out DEST` (a whole
dataset, service/bulk/); flags mirror the VIT_* settings; flags win."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from service import processes
from service.settings import Settings, UnknownSetting, describe_error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vit-serve",
        description="Serve a Vision Transformer over HTTP (`vit-serve embed --help`: embed a dataset)."
        " Every flag is also a VIT_* variable.",
    )
    return _with_settings(parser)


def build_embed_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vit-serve embed",
        description="Embed every image of SOURCE into Parquet shards in DEST, in this process; a second run finishes"
        " what the first left. The model is chosen as the server's: every VIT_* setting and its flag.",
    )
    parser.add_argument(
        "source",
        help="a directory (walked recursively), a text file of paths (one a line), a Parquet or CSV table with a"
        " column of paths or (Parquet) image bytes, or WebDataset tar shards (a file, or a quoted glob)",
    )
    parser.add_argument("--out", type=Path, required=True, help="the output directory (Parquet shards, _manifest.json)")
    parser.add_argument("--shard-size", type=int, default=10_000, help="rows a shard (default: 10000)")
    parser.add_argument("--float16", action="store_true", help="store embeddings as float16")
    parser.add_argument("--top-k", type=int, default=0, help="a classifier's top-k labels beside each embedding")
    parser.add_argument("--overwrite", action="store_true", help="replace another model's embeddings in DEST")
    parser.add_argument("--column", help="a table's column of image paths or bytes (default: found by its name)")
    parser.add_argument("--key-column", help="a table's column of row ids (default: key or id, else the path)")
    return _with_settings(parser)


def _with_settings(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(
            flag,
            dest=name,
            default=argparse.SUPPRESS,
            metavar=name.upper(),
            help=f"{field.description or name} (env VIT_{name.upper()})",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["embed"]:
        return _embed(vars(build_embed_parser().parse_args(argv[1:])))
    settings = _settings(vars(build_parser().parse_args(argv)))
    return 2 if settings is None else processes.serve(settings)


def _settings(args: dict[str, object]) -> Settings | None:
    try:
        return Settings(**args)
    except ValidationError as exc:
        print(f"vit-serve: {describe_error(exc)}", file=sys.stderr)
    except UnknownSetting as exc:
        print(f"vit-serve: {exc}", file=sys.stderr)
    return None


def _embed(args: dict[str, Any]) -> int:
    """`vit-serve embed`: 0 when every image has a row (some may hold errors), 2 when the run could
    not start (a one-line reason)."""
    try:
        from service.bulk.job import EmbedError, Options, embed
        from service.bulk.output import OutputError
        from service.bulk.sources import Columns, SourceError
    except ImportError as exc:  # pyarrow: the [bulk] extra
        print(f"vit-serve embed: {exc.name} is missing: pip install 'vit-serve[bulk]'", file=sys.stderr)
        return 2
    names = ("source", "out", "shard_size", "float16", "top_k", "overwrite")
    columns = Columns(args.pop("column"), args.pop("key_column"))
    options = Options(**{name: args.pop(name) for name in names}, columns=columns)
    settings = _settings(args)
    if settings is None:
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = asyncio.run(embed(settings, options))
    except (EmbedError, OutputError, SourceError) as exc:
        print(f"vit-serve embed: {exc}", file=sys.stderr)
        return 2
    print(
        f"{options.out}: {summary.embedded:,} images embedded ({summary.failed:,} with an error in their row) in"
        f" {summary.seconds:.2f} s; {summary.before:,} were done before",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
