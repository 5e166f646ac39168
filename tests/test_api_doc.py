"""docs/API.md is the contract: every setting, error type and metric the service has is in it,
and it names none that the service lacks."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import generate_latest

from service import errors
from service.metrics import Metrics
from service.settings import RENAMED, Settings

API = (Path(__file__).parents[1] / "docs" / "API.md").read_text()


def section(title: str) -> str:
    return API.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_every_setting_is_documented_and_every_documented_setting_exists() -> None:
    documented = set(re.findall(r"`(VIT_[A-Z_]+)`", section("Settings"))) - set(RENAMED)  # old names, said so
    assert documented == {f"VIT_{name.upper()}" for name in Settings.model_fields}


def test_every_error_type_is_in_the_error_table_with_its_status() -> None:
    rows = set(re.findall(r"^\| (\d{3}) \| `([a-z_]+)` \|", section("Errors"), re.MULTILINE))
    kinds = {
        (str(kind.status), kind.type)
        for kind in vars(errors).values()
        if isinstance(kind, type) and issubclass(kind, errors.ServiceError) and kind.status != 499
    }
    assert rows == kinds  # 499 is the client's own departure: no client ever reads it


def test_every_metric_is_documented() -> None:
    exported = set(re.findall(r"^# TYPE (vit_\w+) ", generate_latest(Metrics().registry).decode(), re.MULTILINE))
    documented = set(re.findall(r"^\| `(vit_\w+)[{`]", section("Metrics"), re.MULTILINE))
    assert documented == exported
