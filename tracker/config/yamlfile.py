"""Reading the config file's YAML: bounded in size and aliases, no key given twice.

A fleet's file is a few KiB; a wrong file (a log, an archive) is refused before parsing, not
after minutes and gigabytes, and a few nested aliases cannot stand for billions of values.
"""

from __future__ import annotations

import errno
import os
from functools import partial
from typing import Any

import yaml

from tracker.config.bounded import LOOK_BOUND, answered
from tracker.core.smallfiles import read_small
from tracker.core.text import one_line
from tracker.errors import ConfigError, ConfigNotReady

#: The largest config file read. A fleet's file is a few KiB (3,000 targets: ~150 KiB);
#: parsing YAML costs ~1.5 s per MiB and ~30x its size in memory here, so a wrong file (a
#: log, an archive) must be refused before it is parsed, not after minutes and gigabytes.
MAX_CONFIG_BYTES = 2 * 1024 * 1024
#: The most aliases (``*name``) a config may use: each one is a whole copy of its anchor for
#: the checks that follow, so a few nested ones could stand for billions of values.
MAX_ALIASES = 100
#: The deepest nesting of a config's values. A config nests a few levels (a group's
#: ``trust``, its lists); reading each level recurses in the YAML library, the checks and
#: their error lines, so a file of thousands of ``[`` would end in a RecursionError, not a
#: line naming the problem.
MAX_DEPTH = 32
#: The most characters of an integer: a config's largest is a size in bytes; past a few
#: thousand digits Python refuses to convert one, in words about its own settings.
MAX_NUMBER = 64


class PlainInt(int):
    """An unquoted YAML integer, with the text it was written as (``yaml_text``): a key that
    takes a string takes that text, as the Go tracker's yaml.v3 does (``password: 0123456``
    is "0123456" there; to PyYAML's YAML 1.1 it is the octal 42798)."""

    yaml_text: str


class PlainFloat(float):
    """An unquoted YAML float, with the text it was written as (:class:`PlainInt`)."""

    yaml_text: str


def read_yaml(path: str) -> object:
    """The parsed YAML document; ConfigError for unreadable, oversized files, one that does
    not answer within :data:`~tracker.config.bounded.LOOK_BOUND` (a hung mount), and YAML
    syntax errors."""
    # Read in a thread of its own, within the bound: a config file on a hung mount held
    # check-config, serve's start and every reload after it (docs/configuration.md, "Paths
    # on a hung mount"); parsed here.
    data = answered(("config", path), partial(_read_config, path))
    if data is None:  # the machine is not ready, not the file wrong (exit 75 at start)
        raise ConfigNotReady(
            [f"{path}: the config file did not answer within {LOOK_BOUND:g}s (a hung mount?)"]
        )
    try:
        return yaml.load(data, Loader=_UniqueKeyLoader)  # a SafeLoader: no arbitrary objects
    except yaml.MarkedYAMLError as exc:
        where = exc.problem_mark or exc.context_mark
        line = f"line {where.line + 1}, column {where.column + 1}: " if where else ""
        reason = exc.problem or exc.context or "invalid YAML"
        raise ConfigError([f"{path}: invalid YAML at {line}{reason}"]) from None
    except yaml.reader.ReaderError as exc:  # a byte no text holds (not UTF-8, a NUL)
        number = data[: exc.position].count(b"\n") + 1
        reason = f"{exc.reason} (byte {exc.position}; UTF-8 text only)"
        raise ConfigError([f"{path}: invalid YAML at line {number}: {reason}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([one_line(f"{path}: invalid YAML: {exc}")]) from None
    except (ValueError, TypeError, OverflowError) as exc:
        # PyYAML's constructors raise these for a scalar its tag cannot be: each is given
        # its line where the loader builds it (_UniqueKeyLoader.construct_object); one
        # raised elsewhere is still a bad value of the file, as any other
        raise ConfigError([one_line(f"{path}: invalid YAML value: {exc}")]) from None


def _read_config(path: str) -> bytes:
    try:
        # A regular file only, opened without blocking (a FIFO at the path would hold the
        # read, and a reload with it, forever); its links followed: the operator's own.
        return read_small(path, MAX_CONFIG_BYTES, follow=True)
    except OSError as exc:
        if exc.errno == errno.EFBIG:
            size = _size_of(path)
            raise ConfigError(
                [f"{path}: the config file is {size} bytes, more than the {MAX_CONFIG_BYTES} read"]
            ) from None
        raise ConfigError([f"{path}: cannot read the config file: {exc.strerror}"]) from None


def _size_of(path: str) -> str:
    try:
        return f"{os.stat(path).st_size:,}"
    except OSError:
        return "more than that"


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, but a key given twice in one mapping is an error (as in Go's yaml.v3), and
    more than MAX_ALIASES aliases or values nested deeper than MAX_DEPTH are refused."""

    _aliases = 0
    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise yaml.composer.ComposerError(
                    None, None, f"more than {MAX_ALIASES} aliases", mark
                )
        if self._depth >= MAX_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"values nested more than {MAX_DEPTH} levels deep", mark
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """The value of ``node``; a scalar its tag cannot be (``2024-02-30``, ``!!int abc``,
        a number of thousands of digits) is an error at its line, as a syntax error is. An
        unquoted number keeps its text (:class:`PlainInt`, :class:`PlainFloat`)."""
        integer = isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:int"
        if integer and len(node.value) > MAX_NUMBER:
            reason = f"a number of {len(node.value)} characters (at most {MAX_NUMBER})"
            raise yaml.constructor.ConstructorError(None, None, reason, node.start_mark)
        try:
            value = super().construct_object(node, deep=deep)
        except (ValueError, TypeError, OverflowError) as exc:
            kind = node.tag.rsplit(":", 1)[-1]  # (never the value: it may be a secret)
            reason = f"not a valid {kind} (quote it for text): {exc}"
            raise yaml.constructor.ConstructorError(
                None, None, one_line(reason), node.start_mark
            ) from None
        if isinstance(node, yaml.ScalarNode) and node.style is None:  # unquoted
            plain = {int: PlainInt, float: PlainFloat}.get(type(value))
            if plain is not None:
                number = plain(value)
                number.yaml_text = node.value
                return number
        return value

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _value in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            if not isinstance(key_node, yaml.ScalarNode):  # no key of a config is a list
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    "a key must be a plain value, not a list or a mapping",
                    key_node.start_mark,
                )
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"duplicate key {key!r}",
                    key_node.start_mark,
                )
            if isinstance(key, str | int | float | bool):
                seen.add(key)
        return super().construct_mapping(node, deep=deep)
