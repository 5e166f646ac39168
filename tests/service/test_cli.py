"""service/cli.py: one flag per setting, flags over the environment, and one line (exit 2) for a
bad value, before anything is loaded."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from bench.harness import free_port, wait_ready
from service import cli
from service.settings import Settings


def test_every_setting_has_its_flag_and_its_variable_in_the_help() -> None:
    help_text = cli.build_parser().format_help()
    for name in Settings.model_fields:
        assert f"--{name.replace('_', '-')}" in help_text and f"VIT_{name.upper()}" in help_text


@pytest.mark.e2e
def test_a_flag_wins_over_its_variable() -> None:
    port = free_port()
    env = {**os.environ, "VIT_HOST": "127.0.0.1", "VIT_PORT": str(port), "VIT_MAX_BATCH_SIZE": "8"}
    command = [sys.executable, "-m", "service", "--max-batch-size", "4"]
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", proc)
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).json()
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
    assert models["data"][0]["max_batch_size"] == 4


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--max-batch-size", "0"], "vit-serve: invalid setting VIT_MAX_BATCH_SIZE: "),
        (["--workers", "2", "--engine-process", "false"], "vit-serve: invalid settings: VIT_WORKERS > 1 needs"),
    ],
)
def test_a_bad_value_is_one_line_and_exit_2(argv: list[str], line: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(line), err
