"""Loading the config file: YAML, structured and checked with cattrs, every problem at once.

:func:`load_config` reads the file (:mod:`tracker.config.yamlfile`: size cap, alias limit, a
key given twice refused as Go's yaml.v3 does) and structures it through a cattrs ``Converter``
(:mod:`tracker.config.converter`, ``forbid_extra_keys``, ``detailed_validation``) whose hooks
also check every value (:mod:`tracker.config.values`, paths in :mod:`tracker.config.files`,
each section's fields together in :mod:`tracker.config.sections`). Nothing stops at the
first problem: every one is collected with its key path and raised together as
:class:`~tracker.errors.ConfigError` (:mod:`tracker.config.problems` formats them). What is
valid but probably unintended becomes ``Config.warnings`` (:mod:`tracker.config.warnings`).

Beyond the Go tracker's format (rpcpool/solana-cluster, ``types/config.go``):

- a key with an empty (null) value is the same as leaving the key out, as in Go;
- ``tls_config`` also takes the keys yaml.v3 derives from the Go field names (``cafile``,
  ``certfile``, ``keyfile``, ``insecureskipverify``): the Go struct had no yaml tags before
  May 2022 (commit b1b2e76), so those are the keys the Go tracker's first versions read;
- ``scheme: ""`` means ``http``; ``api_path`` is normalised to ``""`` or ``/a/b``;
- ``static_targets`` may omit the port (the scheme's default port), as they may in Go;
- durations may also be plain numbers of seconds; yaml.v3's ``y``/``on``/``no``... booleans work;
- an unquoted number where a string goes is the text it was written as, as yaml.v3 reads it
  (:class:`tracker.config.yamlfile.PlainInt`).

Not accepted although Go's yaml.v3 would: a YAML boolean where a string is expected
(``password: yes``): the loader keeps a number's text, not a boolean's; quote such values.

Relative paths are resolved against the config file's directory and stored absolute; a
leading ``~`` is refused (:meth:`tracker.config.files.FileChecks.resolve`).
"""

from __future__ import annotations

import os

import attrs

from tracker.config.bounded import not_ready
from tracker.config.converter import as_mapping, config_converter
from tracker.config.files import FileChecks, PathLooks
from tracker.config.problems import Path, flatten, lines
from tracker.config.schema import Config
from tracker.config.sections import (
    file_problems,
    listener_problems,
    local_problems,
    merge_groups,
    proof_problems,
    store_problems,
)
from tracker.config.values import describe
from tracker.config.warnings import config_warnings
from tracker.config.yamlfile import read_yaml
from tracker.errors import ConfigError, ConfigNotReady


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, validate and return the config file at ``path``.

    Raises ConfigError listing every problem (``key.path: reason``): an unreadable file, invalid
    YAML (with its line), a top level that is not a mapping, an empty file, and every invalid
    key or value. ``Config.warnings`` lists what is valid but probably unintended.
    """
    file_path = os.path.abspath(os.fspath(path))
    raw = read_yaml(file_path)
    if raw is None:
        raise ConfigError([f"{file_path}: the config file is empty"])
    if not isinstance(raw, dict):
        raise ConfigError([f"{file_path}: expected a mapping of settings, got {describe(raw)}"])
    checks = FileChecks(os.path.dirname(file_path))
    converter = config_converter(checks)
    config: Config | None = None
    problems: list[tuple[Path, str]] = []
    try:
        config = converter.structure(raw, Config)
    except Exception as exc:  # the whole tree of problems is turned into lines below
        problems = flatten(exc, ())
    problems += file_problems(as_mapping(raw, {}))
    if config is not None:
        groups, entries, merging = merge_groups(config.target_groups)
        config = attrs.evolve(config, target_groups=groups, group_entries=entries)
        problems += merging
        problems += store_problems(config) + proof_problems(config) + listener_problems(config)
        problems += local_problems(config, checks.looks)
    if problems or config is None:
        messages = [message for _, message in problems]
        if not_ready(messages, checks.looks.unanswered):  # the machine's, not the file's
            raise ConfigNotReady(lines(problems))
        raise ConfigError(lines(problems))
    return _finish_config(config, file_path, checks.looks)


def _finish_config(config: Config, file_path: str, looks: PathLooks) -> Config:
    default_group = config.default_group
    if not default_group and config.target_groups:
        default_group = config.target_groups[0].group
    config = attrs.evolve(config, default_group=default_group, config_path=file_path)
    return attrs.evolve(config, warnings=tuple(config_warnings(config, looks)))
