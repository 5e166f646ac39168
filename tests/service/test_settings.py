"""Settings (service/settings.py): an unknown VIT_* variable, in the environment or a .env file,
stops start-up with one line naming it and the closest setting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings, UnknownSetting


def test_an_unknown_environment_variable_is_refused_with_the_closest_setting(monkeypatch) -> None:
    monkeypatch.setenv("VIT_MAX_BATCH", "8")
    with pytest.raises(UnknownSetting, match=r"unknown setting VIT_MAX_BATCH; did you mean VIT_MAX_BATCH_SIZE\?"):
        Settings(_env_file=None)


def test_an_unknown_dotenv_key_is_refused(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("VIT_MODLE=vit_test_tiny\nOTHER_TOOL_SETTING=1\n")  # keys of other tools are theirs
    with pytest.raises(UnknownSetting, match="VIT_MODLE; did you mean VIT_MODEL"):
        Settings(_env_file=env_file)


def test_known_settings_from_both_places_are_read(tmp_path: Path, monkeypatch) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("VIT_MAX_HEADERS=40\n")
    monkeypatch.setenv("VIT_DECODE_TIMEOUT_S", "2.5")
    settings = Settings(_env_file=env_file)
    assert settings.max_headers == 40 and settings.decode_timeout_s == 2.5


def test_the_cli_refuses_an_unknown_setting_with_one_line() -> None:
    env = {**os.environ, "VIT_DECODE_THREADS": "4"}  # renamed: decoding runs in processes now
    run = subprocess.run([sys.executable, "-m", "service"], capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "vit-serve: unknown setting VIT_DECODE_THREADS: it is now VIT_DECODE_PROCESSES"
    ]


@pytest.mark.parametrize(
    ("values", "message"),
    [({"compile": False}, "needs VIT_COMPILE"), ({"dtype": "bfloat16"}, "keeps float32")],
)
def test_int8_is_compiled_and_float32_around_it(values: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(_env_file=None, quantize="int8", **values)
    assert Settings(_env_file=None, quantize="int8").resolve("cpu").compile
    assert not Settings(_env_file=None).resolve("cpu").compile


def test_an_engine_process_comes_with_front_ends_or_alone() -> None:
    assert not Settings(_env_file=None).grouped
    assert Settings(_env_file=None, workers=2).grouped
    alone = Settings(_env_file=None, engine_process=True)
    assert alone.grouped and alone.resolve("cpu", cores=8).engine_threads == 7  # a core for the front-end
    assert Settings(_env_file=None).resolve("cpu", cores=8).engine_threads == 8
    with pytest.raises(ValidationError, match="VIT_WORKERS > 1 needs VIT_ENGINE_PROCESS"):
        Settings(_env_file=None, workers=2, engine_process=False)
