"""What the config tests share: writing a config file and loading it, the problems it
gives, the data directory of example configs."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tracker.config.loading import load_config
from tracker.config.schema import Config
from tracker.errors import ConfigError

DATA = Path(__file__).resolve().parent / "data" / "config"


def write(tmp_path: Path, text: str, name: str = "tracker.yml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load(tmp_path: Path, text: str) -> Config:
    return load_config(write(tmp_path, text))


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return info.value.problems


def problem_at(found: list[str], path: str) -> str:
    """The one problem reported at exactly ``path``."""
    matching = [line for line in found if line.startswith(f"{path}: ")]
    assert len(matching) == 1, f"expected one problem at {path!r}, got {found}"
    return matching[0]
