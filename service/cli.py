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
    parser.add_argument("--lancedb", type=Path, help="also write the embedded rows into this LanceDB ([lancedb] extra)")
    parser.add_argument("--table", default="images", help="the LanceDB table (default: images)")
    parser.add_argument(
        "--index-min-rows", type=int, default=50_000, help="build the table's vector index from this many rows"
    )
    return _with_settings(parser)


def build_search_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vit-serve search",
        description="The rows of a LanceDB table filled by `vit-serve embed --lancedb` nearest to an image (or, for a"
        " CLIP or SigLIP pair, a text), embedded by the same model: chosen as the server's, by every VIT_* setting.",
    )
    parser.add_argument("lancedb", type=Path, help="the LanceDB directory")
    parser.add_argument("--table", default="images", help="the table (default: images)")
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--image", type=Path, help="an image file")
    query.add_argument("--text", help="a text (a CLIP or SigLIP pair)")
    parser.add_argument("-k", type=int, default=5, help="how many rows (default: 5)")
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
    if argv[:1] == ["search"]:
        return _search(vars(build_search_parser().parse_args(argv[1:])))
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


def _log(settings: Settings) -> None:
    """A command's log lines, at VIT_LOG_LEVEL, on stderr."""
    logging.basicConfig(level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")


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
    names = ("source", "out", "shard_size", "float16", "top_k", "overwrite", "lancedb", "table", "index_min_rows")
    columns = Columns(args.pop("column"), args.pop("key_column"))
    options = Options(**{name: args.pop(name) for name in names}, columns=columns)
    settings = _settings(args)
    if settings is None:
        return 2
    _log(settings)
    try:
        summary = asyncio.run(embed(settings, options))
    except (EmbedError, OutputError, SourceError) as exc:
        print(f"vit-serve embed: {exc}", file=sys.stderr)
        return 2
    model = summary.model
    print(
        f"{options.out}: {summary.embedded:,} images embedded ({summary.failed:,} with an error in their row) in"
        f" {summary.seconds:.2f} s; {summary.before:,} were done before",
        file=sys.stderr,
    )
    if model.batches:  # whether the model set the pace (near 100 %), or reading and decoding did
        print(
            f"the model was busy {100 * model.seconds / max(summary.seconds, 1e-9):.0f} % of that time, in"
            f" {model.batches:,} batches of {model.images / model.batches:.1f} images on average",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())


def _search(args: dict[str, Any]) -> int:
    """`vit-serve search`: one line per row found, its cosine similarity and its key; 2, with one
    line, when the search cannot be made."""
    try:
        from service.bulk.job import EmbedError
        from service.bulk.output import OutputError
        from service.bulk.search import nearest
    except ImportError as exc:  # lancedb: the [lancedb] extra
        print(f"vit-serve search: {exc.name} is missing: pip install 'vit-serve[lancedb]'", file=sys.stderr)
        return 2
    query = {name: args.pop(name) for name in ("lancedb", "table", "image", "text", "k")}
    settings = _settings(args)
    if settings is None:
        return 2
    _log(settings)
    try:
        found = asyncio.run(
            nearest(settings, query["lancedb"], query["table"], query["image"], query["text"], query["k"])
        )
    except (EmbedError, OutputError) as exc:
        print(f"vit-serve search: {exc}", file=sys.stderr)
        return 2
    for key, score in found:
        print(f"{score:.4f}\t{key}")
    return 0
