"""The config file: frozen attrs values, loaded from YAML and validated once, at load.

:func:`load_config` reads the file with a ``yaml.SafeLoader`` (that also refuses a key given
twice, as Go's yaml.v3 does) and structures it through a cattrs
``Converter`` (``forbid_extra_keys``, ``detailed_validation``) whose hooks also check every
value. Nothing stops at the first problem: every one is collected with its key path and raised
together as :class:`~tracker.errors.ConfigError`, one ``key.path: reason`` line each, e.g.
``target_groups[0].http_targets.targets[1]: not an absolute http(s) URL: 'foo'``.

The format is a superset of the Go tracker's (rpcpool/solana-cluster, ``types/config.go``):

- a key with an empty (null) value is the same as leaving the key out, as in Go;
- ``tls_config`` also takes the keys yaml.v3 derives from the Go field names (``cafile``,
  ``certfile``, ``keyfile``, ``insecureskipverify``): the Go struct has no yaml tags, so those
  are the keys the Go tracker really accepts;
- ``scheme: ""`` means ``http``; ``api_path`` is normalised to ``""`` or ``/a/b``;
- ``static_targets`` may omit the port (the scheme's default port), as they may in Go;
- durations may also be plain numbers of seconds; yaml.v3's ``y``/``on``/``no``... booleans work.

Not accepted although Go's yaml.v3 would: a YAML number or boolean where a string is expected
(``password: 1234``): PyYAML has already lost the original text, so quote such values.

Relative paths are resolved against the config file's directory and stored absolute. Secrets
(``password_file``, ``token_file``) are read at load; they never appear in ``repr()``.
"""

from __future__ import annotations

import base64
import difflib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

import attrs
import cattrs
import yaml
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn, override

from tracker.core import values
from tracker.core.redact import redact_text
from tracker.core.targetfile import read_target_file
from tracker.core.values import (
    check_target,
    describe,
    format_address,
    parse_address,
    parse_duration,
)
from tracker.errors import ConfigError, ProbeError

__all__ = [
    "BasicAuth",
    "BearerAuth",
    "Config",
    "ConsulSDConfig",
    "Egress",
    "FileTargets",
    "HttpTargets",
    "LocalTargets",
    "StaticTargets",
    "TLSConfig",
    "TargetGroup",
    "check_target",
    "format_address",
    "load_config",
    "parse_address",
    "parse_duration",
    "with_overrides",
]

#: Field metadata marking values that are computed at load, never read from the YAML file.
_NOT_YAML = {"yaml": False}


def _inline_password(auth: BasicAuth) -> str:
    return auth.password


def _inline_token(auth: BearerAuth | ConsulSDConfig) -> str:
    return auth.token


@attrs.frozen
class BasicAuth:
    """RFC 7617 credentials sent to the group's own sources."""

    username: str = ""
    password: str = attrs.field(default="", repr=False)
    password_file: str = ""
    #: The password to send: ``password``, or the content of ``password_file`` read at load
    #: (one trailing newline dropped).
    resolved_password: str = attrs.field(
        default=attrs.Factory(_inline_password, takes_self=True),
        repr=False,
        kw_only=True,
        metadata=_NOT_YAML,
    )


@attrs.frozen
class BearerAuth:
    """A bearer token sent to the group's own sources."""

    token: str = attrs.field(default="", repr=False)
    token_file: str = ""
    #: The token to send: ``token``, or the content of ``token_file`` read at load.
    resolved_token: str = attrs.field(
        default=attrs.Factory(_inline_token, takes_self=True),
        repr=False,
        kw_only=True,
        metadata=_NOT_YAML,
    )


@attrs.frozen
class TLSConfig:
    """TLS settings for the group's https sources; paths are absolute after load."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    insecure_skip_verify: bool = False


@attrs.frozen
class StaticTargets:
    """Sidecars given as ``host:port`` (the port may be left out, as in the Go tracker)."""

    targets: tuple[str, ...] = ()


@attrs.frozen
class FileTargets:
    """Sidecars listed in a file (see ``tracker.core.targetfile``), re-read every scrape."""

    path: str


@attrs.frozen
class HttpTargets:
    """Validator RPC / snapshot HTTP servers, absolute http(s) URLs without a trailing slash."""

    targets: tuple[str, ...] = ()


@attrs.frozen
class LocalTargets:
    """Directories on this machine holding snapshot archives (absolute after load)."""

    paths: tuple[str, ...] = ()


@attrs.frozen
class ConsulSDConfig:
    """Consul service discovery, accepted with the Go tracker's keys (``host`` = Consul address)."""

    host: str = ""
    token: str = attrs.field(default="", repr=False)
    token_file: str = ""
    datacenter: str = ""
    service: str = ""
    filter: str = ""
    #: The ACL token to send: ``token``, or the content of ``token_file`` read at load.
    resolved_token: str = attrs.field(
        default=attrs.Factory(_inline_token, takes_self=True),
        repr=False,
        kw_only=True,
        metadata=_NOT_YAML,
    )


@attrs.frozen
class TargetGroup:
    """One cluster/network: its sources and how to reach them."""

    group: str
    scheme: str = "http"
    api_path: str = ""
    basic_auth: BasicAuth | None = None
    bearer_auth: BearerAuth | None = None
    tls_config: TLSConfig | None = None
    static_targets: StaticTargets | None = None
    file_targets: FileTargets | None = None
    consul_sd_config: ConsulSDConfig | None = None
    http_targets: HttpTargets | None = None
    local_targets: LocalTargets | None = None

    @property
    def authorization(self) -> str | None:
        """The ``Authorization`` header value for this group's sources, or None.

        With both ``basic_auth`` and ``bearer_auth`` the bearer token wins, as in the Go tracker
        (it sets the header after the basic credentials).
        """
        if self.bearer_auth is not None:
            return f"Bearer {self.bearer_auth.resolved_token}"
        if self.basic_auth is not None:
            pair = f"{self.basic_auth.username}:{self.basic_auth.resolved_password}"
            return "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        return None


@attrs.frozen
class Egress:
    """Where connections to addresses that came from the network may go (CIDR lists).

    Addresses the operator configured are trusted as typed; a ``Location`` answered by a
    source, a redirect followed while proxying, a discovered node are checked after
    resolution: public unicast addresses and ``allow`` pass, ``deny`` never does (see
    :mod:`tracker.net.egress`).
    """

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()


def _default_timeout(config: Config) -> float:
    return min(10.0, config.scrape_interval)


@attrs.frozen
class Config:
    """The whole config file. Durations are in seconds; paths are absolute after load."""

    scrape_interval: float = 15.0
    scrape_timeout: float = attrs.field(default=attrs.Factory(_default_timeout, takes_self=True))
    listen: str = ":8458"
    internal_listen: str = "127.0.0.1:8457"
    # An RPC URL often carries an API key in its path or query: keep it out of repr().
    rpc: str = attrs.field(default="", repr=False)
    max_snapshot_age: int = 1000
    default_group: str = ""
    public_url: str = ""
    proxy_snapshot_downloads: bool = False
    proxy_snapshot_cache_dir: str = ""
    cache_complete_on_disconnect: bool = True
    max_target_failures: int = 3
    scrape_concurrency: int = 64
    #: Open client connections per listener (lowered below the descriptor limit at start).
    max_connections: int = 4096
    shutdown_grace: float = 30.0
    cache_share_inflight: bool = False
    cache_prefetch: bool = False
    cache_prefetch_concurrency: int = 1
    egress: Egress = Egress()
    target_groups: tuple[TargetGroup, ...] = ()
    #: The absolute path the config was loaded from (set by load_config, not a YAML key).
    config_path: str = attrs.field(default="", metadata=_NOT_YAML)
    #: Things that are valid but probably unintended; the caller logs them.
    warnings: tuple[str, ...] = attrs.field(default=(), eq=False, repr=False, metadata=_NOT_YAML)

    def group_named(self, name: str) -> TargetGroup | None:
        """The group called ``name``, or None."""
        return next((g for g in self.target_groups if g.group == name), None)


_T = TypeVar("_T")


def _list_of(item: Callable[[Any], _T]) -> Callable[[object], tuple[_T, ...]]:
    """A YAML sequence, every item checked; every bad item is reported with its index."""

    def check(value: object) -> tuple[_T, ...]:
        if not isinstance(value, list):
            raise ValueError(f"expected a list, got {describe(value)}")
        result: list[_T] = []
        errors: list[Exception] = []
        for index, raw in enumerate(value):
            try:
                result.append(item(raw))
            except Exception as exc:  # every failure is collected, reported with its index
                exc.__notes__ = [*getattr(exc, "__notes__", []), _index_note(index)]
                errors.append(exc)
        if errors:
            raise IterableValidationError("invalid items", errors, tuple)
        return tuple(result)

    return check


def _index_note(index: int) -> IterableValidationNote:
    return IterableValidationNote(f"item {index}", index, object)


# ---------------------------------------------------------------------------------------------
# Loading: a converter per load, because path checks need the config file's directory.

_Path = tuple[str | int, ...]


class _Problems(Exception):
    """Problems found across the fields of one object, each with a path relative to it."""

    def __init__(self, problems: list[tuple[_Path, str]]) -> None:
        super().__init__("; ".join(message for _, message in problems))
        self.problems = problems


#: Keys yaml.v3 derives from the Go TLSConfig field names (it has json tags but no yaml tags).
_TLS_GO_KEYS = {
    "cafile": "ca_file",
    "certfile": "cert_file",
    "keyfile": "key_file",
    "insecureskipverify": "insecure_skip_verify",
}


class _Loader:
    """Structures one config file; holds what its hooks need (directory, secrets read)."""

    def __init__(self, base_dir: str) -> None:
        self.base_dir = base_dir
        self.secrets: dict[str, str] = {}
        self.converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
        self._register()

    def _register(self) -> None:
        for kind, check in ((str, values.string), (bool, values.boolean), (int, values.integer)):
            self.converter.register_structure_hook(kind, _ignore_type(check))
        self._add(BasicAuth, {"password_file": self._secret_file}, self._finish_basic_auth)
        self._add(BearerAuth, {"token_file": self._secret_file}, self._finish_bearer_auth)
        self._add(ConsulSDConfig, {"token_file": self._secret_file}, self._finish_consul)
        files = {name: self._readable_file for name in ("ca_file", "cert_file", "key_file")}
        self._add(TLSConfig, files, _finish_tls, aliases=_TLS_GO_KEYS)
        self._add(StaticTargets, {"targets": _list_of(_target)})
        self._add(FileTargets, {"path": self._targets_file})
        self._add(HttpTargets, {"targets": _list_of(values.http_target)})
        self._add(LocalTargets, {"paths": _list_of(self._directory)})
        self._add(Egress, {"allow": _list_of(values.cidr), "deny": _list_of(values.cidr)})
        self._add(
            TargetGroup,
            {"group": values.group_name, "scheme": values.scheme, "api_path": values.api_path},
        )
        self._add(Config, self._config_fields())

    def _config_fields(self) -> dict[str, Callable[[Any], Any]]:
        return {
            "scrape_interval": values.positive_duration,
            "scrape_timeout": values.positive_duration,
            "shutdown_grace": values.positive_duration,
            "listen": values.address,
            "internal_listen": values.optional_address,
            "rpc": values.rpc_url,
            "public_url": values.public_url,
            "max_snapshot_age": values.integer_in(0),
            "max_target_failures": values.integer_in(1),
            "scrape_concurrency": values.integer_in(1, 10000),
            "max_connections": values.integer_in(1, 1_000_000),
            "cache_prefetch_concurrency": values.integer_in(1),
            "proxy_snapshot_cache_dir": self._cache_dir,
            "target_groups": _list_of(lambda raw: self.converter.structure(raw, TargetGroup)),
        }

    def _add(
        self,
        cls: type[_T],
        checks: Mapping[str, Callable[[Any], Any]],
        finish: Callable[[_T], _T] | None = None,
        aliases: Mapping[str, str] | None = None,
    ) -> None:
        """Register the hook of one class: checks per field, then ``finish`` on the object."""
        overrides = {name: override(struct_hook=_ignore_type(fn)) for name, fn in checks.items()}
        for field in attrs.fields(cast("type[attrs.AttrsInstance]", cls)):
            if not field.metadata.get("yaml", True):
                overrides[field.name] = override(omit=True)
        base = make_dict_structure_fn(cls, self.converter, **overrides)  # type: ignore[arg-type]

        def hook(value: object, _type: object) -> _T:
            obj = base(_as_mapping(value, aliases or {}), cls)
            return finish(obj) if finish is not None else obj

        self.converter.register_structure_hook(cls, hook)

    def _resolve(self, value: object) -> str:
        text = values.string(value)
        return os.path.abspath(os.path.join(self.base_dir, text)) if text else ""

    def _readable_file(self, value: object) -> str:
        path = self._resolve(value)
        if path:
            _read_text(path)
        return path

    def _secret_file(self, value: object) -> str:
        path = self._resolve(value)
        if path:
            text = _read_text(path)
            # Editors end files with a newline that is not part of the secret: drop one.
            self.secrets[path] = text[:-2] if text.endswith("\r\n") else text.removesuffix("\n")
        return path

    def _targets_file(self, value: object) -> str:
        path = self._resolve(value)
        if not path:
            raise ValueError("must not be empty")
        # A missing file is only a warning (it is re-read every scrape and may appear later);
        # one that exists must pass the scraper's own reader now, so check-config catches it.
        if os.path.lexists(path):
            try:
                read_target_file(path)
            except ProbeError as exc:
                raise ValueError(str(exc)) from None
        return path

    def _directory(self, value: object) -> str:
        path = self._resolve(value)
        if not path:
            raise ValueError("must not be empty")
        if not os.path.isdir(path):
            what = "not a directory" if os.path.exists(path) else "no such directory"
            raise ValueError(f"{what}: {path!r}")
        return path

    def _cache_dir(self, value: object) -> str:
        path = self._resolve(value)
        # The cache creates a missing directory; something else in its place is an error.
        if path and os.path.exists(path) and not os.path.isdir(path):
            raise ValueError(f"not a directory: {path!r}")
        return path

    def _finish_basic_auth(self, auth: BasicAuth) -> BasicAuth:
        problems: list[tuple[_Path, str]] = []
        if not auth.username:
            problems.append((("username",), "basic_auth needs a username"))
        if auth.password and auth.password_file:
            problems.append(((), "set either password or password_file, not both"))
        _raise_problems(problems)
        if auth.password_file:
            auth = attrs.evolve(auth, resolved_password=self.secrets[auth.password_file])
        return auth

    def _finish_bearer_auth(self, auth: BearerAuth) -> BearerAuth:
        problems: list[tuple[_Path, str]] = []
        if auth.token and auth.token_file:
            problems.append(((), "set either token or token_file, not both"))
        if not auth.token and not auth.token_file:
            problems.append(((), "set token or token_file"))
        if auth.token_file and not self.secrets[auth.token_file]:
            problems.append((("token_file",), f"the token file {auth.token_file!r} is empty"))
        _raise_problems(problems)
        return attrs.evolve(auth, resolved_token=self.secrets.get(auth.token_file, auth.token))

    def _finish_consul(self, consul: ConsulSDConfig) -> ConsulSDConfig:
        if consul.token and consul.token_file:
            _raise_problems([((), "set either token or token_file, not both")])
        token = self.secrets.get(consul.token_file, consul.token)
        return attrs.evolve(consul, resolved_token=token)


def _target(value: object) -> str:
    return check_target(values.string(value))


def _finish_tls(tls: TLSConfig) -> TLSConfig:
    problems: list[tuple[_Path, str]] = []
    if tls.cert_file and not tls.key_file:
        problems.append((("key_file",), "required when cert_file is set"))
    if tls.key_file and not tls.cert_file:
        problems.append((("cert_file",), "required when key_file is set"))
    _raise_problems(problems)
    return tls


def _raise_problems(problems: list[tuple[_Path, str]]) -> None:
    if problems:
        raise _Problems(problems)


def _ignore_type(check: Callable[[Any], _T]) -> Callable[[Any, Any], _T]:
    return lambda value, _type: check(value)


def _as_mapping(value: object, aliases: Mapping[str, str]) -> dict[Any, Any]:
    """The YAML mapping of one object, without null values (null = key absent, as in Go)."""
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping, got {describe(value)}")
    mapping = {key: item for key, item in value.items() if item is not None}
    for alias, key in aliases.items():
        if alias in mapping:
            if key in mapping:
                raise _Problems([((alias,), f"same setting as {key!r}; give only one of them")])
            mapping[key] = mapping.pop(alias)
    return mapping


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8", newline="") as file:  # secrets verbatim, no \r -> \n
            return file.read()
    except OSError as exc:
        raise ValueError(f"cannot read {path!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"cannot read {path!r}: not UTF-8 text") from None


# ---------------------------------------------------------------------------------------------
# Errors: cattrs' exception tree -> ["key.path: message", ...]


def _flatten(exc: BaseException, path: _Path) -> list[tuple[_Path, str]]:
    if isinstance(exc, ClassValidationError | IterableValidationError):
        found: list[tuple[_Path, str]] = []
        for sub in exc.exceptions:
            found += _flatten(sub, path + _note_step(sub))
        return found
    if isinstance(exc, ForbiddenExtraKeysError):
        keys = sorted(str(key) for key in exc.extra_fields)
        return [((*path, key), _unknown_key(key, exc.cl)) for key in keys]
    if isinstance(exc, _Problems):
        return [(path + sub, message) for sub, message in exc.problems]
    if isinstance(exc, KeyError):
        return [(path, "required key missing")]
    if isinstance(exc, ValueError | TypeError):
        return [(path, str(exc))]
    return [(path, f"invalid value ({exc!r})")]


def _note_step(exc: BaseException) -> _Path:
    for note in getattr(exc, "__notes__", []):
        if isinstance(note, AttributeValidationNote):
            return (note.name,)
        if isinstance(note, IterableValidationNote) and isinstance(note.index, int):
            return (note.index,)
    return ()


def _unknown_key(key: str, cls: type) -> str:
    known = [f.name for f in attrs.fields(cls) if f.metadata.get("yaml", True)]
    if cls is TLSConfig:
        known += list(_TLS_GO_KEYS)
    close = difflib.get_close_matches(key, known, n=1)
    return f"unknown key (did you mean {close[0]!r}?)" if close else "unknown key"


def _format_path(path: _Path) -> str:
    text = ""
    for step in path:
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else step)
    return text or "(top level)"


def _lines(problems: Sequence[tuple[_Path, str]]) -> list[str]:
    # Messages quote offending values; URLs in them never show their userinfo or query.
    return [f"{_format_path(path)}: {redact_text(message)}" for path, message in problems]


# ---------------------------------------------------------------------------------------------
# Checks across keys, on the raw mapping so that they run even when other keys are invalid.


def _cross_problems(raw: Mapping[Any, Any]) -> list[tuple[_Path, str]]:
    problems = _group_name_problems(raw)
    interval = _lenient(lambda: parse_duration(raw.get("scrape_interval", 15.0)))
    timeout = _lenient(lambda: parse_duration(raw["scrape_timeout"]))
    if interval is not None and timeout is not None and timeout > interval:
        problems.append(
            (
                ("scrape_timeout",),
                f"must not be longer than scrape_interval ({timeout:g}s > {interval:g}s)",
            )
        )
    return problems


def _group_name_problems(raw: Mapping[Any, Any]) -> list[tuple[_Path, str]]:
    groups = raw.get("target_groups")
    groups = groups if isinstance(groups, list) else []
    first_index: dict[str, int] = {}
    problems: list[tuple[_Path, str]] = []
    for index, group in enumerate(groups):
        name = group.get("group") if isinstance(group, dict) else None
        if not isinstance(name, str):
            continue
        if name in first_index:
            message = f"duplicate group name {name!r} (also target_groups[{first_index[name]}])"
            problems.append((("target_groups", index, "group"), message))
        first_index.setdefault(name, index)
    default = raw.get("default_group")
    if isinstance(default, str) and default and default not in first_index:
        problems.append((("default_group",), f"no target group is named {default!r}"))
    return problems


def _lenient(compute: Callable[[], float]) -> float | None:
    try:
        return compute()
    except (KeyError, ValueError):
        return None


def _warnings(config: Config) -> list[str]:
    found: list[str] = []
    if config.proxy_snapshot_cache_dir and not config.proxy_snapshot_downloads:
        found.append("proxy_snapshot_cache_dir: ignored while proxy_snapshot_downloads is false")
    if not config.target_groups:
        found.append("target_groups: none configured; the tracker will know no snapshots")
    for index, group in enumerate(config.target_groups):
        found += [f"target_groups[{index}]{line}" for line in _group_warnings(group)]
    return found


def _group_warnings(group: TargetGroup) -> list[str]:
    found: list[str] = []
    kinds = ("static_targets", "file_targets", "consul_sd_config", "http_targets", "local_targets")
    if all(getattr(group, kind) is None for kind in kinds):
        found.append(": no targets of any kind; the group stays empty")
    if group.file_targets is not None and not os.path.lexists(group.file_targets.path):
        path = group.file_targets.path
        found.append(f".file_targets.path: {path!r} does not exist yet (re-read every scrape)")
    if group.basic_auth is not None and group.bearer_auth is not None:
        found.append(": both basic_auth and bearer_auth set; the bearer token is sent")
    return found


#: The largest config file read. A fleet's file is a few KiB (3,000 targets: ~150 KiB);
#: parsing YAML costs ~1.5 s per MiB and ~30x its size in memory here, so a wrong file (a
#: log, an archive) must be refused before it is parsed, not after minutes and gigabytes.
MAX_CONFIG_BYTES = 2 * 1024 * 1024
#: The most aliases (``*name``) a config may use: each one is a whole copy of its anchor for
#: the checks that follow, so a few nested ones could stand for billions of values.
MAX_ALIASES = 100


def _read_yaml(path: str) -> object:
    """The parsed YAML document; ConfigError for unreadable, oversized files and YAML syntax
    errors."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the config file: {exc.strerror}"]) from None
    if len(data) > MAX_CONFIG_BYTES:
        size = _size_of(path)
        raise ConfigError(
            [f"{path}: the config file is {size} bytes, more than the {MAX_CONFIG_BYTES} read"]
        )
    try:
        return yaml.load(data, Loader=_UniqueKeyLoader)  # a SafeLoader: no arbitrary objects
    except yaml.MarkedYAMLError as exc:
        where = exc.problem_mark or exc.context_mark
        line = f"line {where.line + 1}, column {where.column + 1}: " if where else ""
        reason = exc.problem or exc.context or "invalid YAML"
        raise ConfigError([f"{path}: invalid YAML at {line}{reason}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: invalid YAML: {exc}"]) from None


def _size_of(path: str) -> str:
    try:
        return f"{os.stat(path).st_size:,}"
    except OSError:
        return "more than that"


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, but a key given twice in one mapping is an error (as in Go's yaml.v3), and
    more than MAX_ALIASES aliases are refused."""

    _aliases = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise yaml.composer.ComposerError(
                    None, None, f"more than {MAX_ALIASES} aliases", mark
                )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _value in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
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


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, validate and return the config file at ``path``.

    Raises ConfigError listing every problem (``key.path: reason``): an unreadable file, invalid
    YAML (with its line), a top level that is not a mapping, an empty file, and every invalid
    key or value. ``Config.warnings`` lists what is valid but probably unintended.
    """
    file_path = os.path.abspath(os.fspath(path))
    raw = _read_yaml(file_path)
    if raw is None:
        raise ConfigError([f"{file_path}: the config file is empty"])
    if not isinstance(raw, dict):
        raise ConfigError([f"{file_path}: expected a mapping of settings, got {describe(raw)}"])
    loader = _Loader(os.path.dirname(file_path))
    config: Config | None = None
    problems: list[tuple[_Path, str]] = []
    try:
        config = loader.converter.structure(raw, Config)
    except Exception as exc:  # the whole tree of problems is turned into lines below
        problems = _flatten(exc, ())
    problems += _cross_problems(_as_mapping(raw, {}))
    if problems or config is None:
        raise ConfigError(_lines(problems))
    return _finish_config(config, file_path)


def _finish_config(config: Config, file_path: str) -> Config:
    default_group = config.default_group
    if not default_group and config.target_groups:
        default_group = config.target_groups[0].group
    config = attrs.evolve(config, default_group=default_group, config_path=file_path)
    return attrs.evolve(config, warnings=tuple(_warnings(config)))


def _cli_int(value: object) -> int:
    # The CLI may hand over the flag's text; the config file must use a YAML integer.
    if isinstance(value, str) and re.fullmatch(r"[0-9]+", value):
        value = int(value)
    return values.integer_in(0)(value)


#: Command-line overrides: Config field -> (flag, check of the value).
_OVERRIDES: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "listen": ("--listen", values.address),
    "internal_listen": ("--internal-listen", values.optional_address),
    "rpc": ("--rpc", values.rpc_url),
    "max_snapshot_age": ("--max-snapshot-age", _cli_int),
}


def with_overrides(config: Config, **values: object) -> Config:
    """``config`` with command-line values applied (``listen``, ``internal_listen``, ``rpc``,
    ``max_snapshot_age``); None means "flag not given". Raises ConfigError naming each bad flag,
    TypeError for an unknown name.
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
    return attrs.evolve(config, **changes)
