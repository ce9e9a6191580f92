"""Command-line overrides of config values (``--listen``, ``--rpc``, ...)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import attrs

from tracker.config import values
from tracker.config.schema import Config
from tracker.config.sections import listener_problems
from tracker.config.warnings import config_warnings
from tracker.errors import ConfigError
from tracker.observability.redact import redact_text


def _cli_int(value: object) -> int:
    # The CLI may hand over the flag's text; the config file must use a YAML integer.
    if isinstance(value, str) and re.fullmatch(r"[0-9]+", value):
        value = int(value)
    return values.integer_in(0)(value)


def _rpcs(value: object) -> tuple[str, ...]:
    # ``--rpc`` may be repeated: each URL checked, in the order given.
    urls = value if isinstance(value, list | tuple) else [value]
    if not urls:
        raise ValueError("at least one URL")
    return tuple(values.rpc_url(url) for url in urls)


#: Command-line overrides: Config field -> (flag, check of the value).
#: The flags of the listeners, by their keys.
_LISTENERS = (("internal_listen", "--internal-listen"), ("listen", "--listen"))
_OVERRIDES: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "listen": ("--listen", values.address),
    "internal_listen": ("--internal-listen", values.optional_address),
    "rpc": ("--rpc", _rpcs),
    "max_snapshot_age": ("--max-snapshot-age", _cli_int),
}


def with_overrides(config: Config, **values: object) -> Config:
    """``config`` with command-line values applied (``listen``, ``internal_listen``, ``rpc``,
    ``max_snapshot_age``); None means "flag not given". ``rpc`` is one URL or several (``--rpc``
    repeated): the first is ``rpc``, the others ``cluster_proof.also_rpc``, the RPCs whose
    answers of the cluster's votes must agree (docs/http-api.md, "The cluster level"). Raises
    ConfigError naming each bad flag, TypeError for an unknown name.
    """
    unknown = sorted(set(values) - set(_OVERRIDES))
    if unknown:
        raise TypeError(f"with_overrides() got unknown settings: {', '.join(unknown)}")
    changes: dict[str, Any] = {}
    problems: list[str] = []
    for name, value in values.items():
        if value is None:
            continue
        flag, check = _OVERRIDES[name]
        try:
            changes[name] = check(value)
        except ValueError as exc:
            problems.append(f"{flag}: {redact_text(str(exc))}")
    if problems:
        raise ConfigError(problems)
    rpcs = changes.pop("rpc", ())
    if rpcs:
        changes["rpc"] = rpcs[0]
    if len(rpcs) > 1:
        changes["cluster_proof"] = attrs.evolve(config.cluster_proof, also_rpc=rpcs[1:])
    config = attrs.evolve(config, **changes)
    # The listeners the flags give are checked together with the file's, as the file's are
    clash = listener_problems(config)
    if clash:
        (_path, reason), *_ = clash
        given = [flag for name, flag in _LISTENERS if values.get(name) is not None]
        raise ConfigError([f"{' / '.join(given) or 'internal_listen'}: {reason}"])
    # A flag can answer a warning of the file (``--rpc``): warn about the config in force.
    return attrs.evolve(config, warnings=tuple(config_warnings(config)))
