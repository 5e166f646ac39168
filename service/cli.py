"""`vit-serve` (also `python -m service`): flags mirror the VIT_* settings; flags win."""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from service import processes
from service.settings import Settings, UnknownSetting, describe_error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vit-serve", description="Serve a Vision Transformer over HTTP. Every flag is also a VIT_* variable."
    )
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
    args = vars(build_parser().parse_args(argv))
    try:
        settings = Settings(**args)
    except ValidationError as exc:
        print(f"vit-serve: {describe_error(exc)}", file=sys.stderr)
        return 2
    except UnknownSetting as exc:
        print(f"vit-serve: {exc}", file=sys.stderr)
        return 2
    return processes.serve(settings)


if __name__ == "__main__":
    sys.exit(main())
