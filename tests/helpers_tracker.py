"""Start the real tracker (hypercorn on 127.0.0.1:0) from a config written by the test."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
import yaml
from helpers_ports import assert_free_ports

from tracker.config.loading import load_config
from tracker.config.schema import Config
from tracker.service import run_tracker


def write_config(directory: Path, settings: dict[str, Any], name: str = "config.yml") -> Path:
    """Write ``settings`` as a YAML config file (listeners on 127.0.0.1:0 unless given)."""
    settings = {"listen": "127.0.0.1:0", "internal_listen": "", **settings}
    path = directory / name
    path.write_text(yaml.safe_dump(settings))
    return path


async def start_tracker(nursery: trio.Nursery, config_path: Path) -> list[str]:
    """Run the tracker from ``config_path`` in ``nursery``; its base URLs (public first)."""
    assert_free_ports(config_path)
    config = load_config(config_path)

    def reload() -> Config:
        return load_config(config_path)

    addresses: list[str] = await nursery.start(run_tracker, config, reload)
    return addresses


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Poll ``predicate`` every 20 ms until it is true; fail after ``timeout`` seconds."""
    with trio.fail_after(timeout):
        while not await predicate():
            await trio.sleep(0.02)
