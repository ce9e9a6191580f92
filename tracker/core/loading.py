"""Loading the config file: YAML, structured and checked with cattrs, every problem at once.

:func:`load_config` reads the file (:mod:`tracker.core.yamlfile`: size cap, alias limit, a
key given twice refused as Go's yaml.v3 does) and structures it through a cattrs ``Converter``
(``forbid_extra_keys``, ``detailed_validation``) whose hooks also check every value. Nothing
stops at the first problem: every one is collected with its key path and raised together as
:class:`~tracker.errors.ConfigError` (:mod:`tracker.core.problems` formats them).

Beyond the Go tracker's format (rpcpool/solana-cluster, ``types/config.go``):

- a key with an empty (null) value is the same as leaving the key out, as in Go;
- ``tls_config`` also takes the keys yaml.v3 derives from the Go field names (``cafile``,
  ``certfile``, ``keyfile``, ``insecureskipverify``): the Go struct has no yaml tags, so those
  are the keys the Go tracker really accepts;
- ``scheme: ""`` means ``http``; ``api_path`` is normalised to ``""`` or ``/a/b``;
- ``static_targets`` may omit the port (the scheme's default port), as they may in Go;
- durations may also be plain numbers of seconds; yaml.v3's ``y``/``on``/``no``... booleans work.

Not accepted although Go's yaml.v3 would: a YAML number or boolean where a string is expected
(``password: 1234``): PyYAML has already lost the original text, so quote such values.

Relative paths are resolved against the config file's directory and stored absolute.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

import attrs
import cattrs
from cattrs.errors import IterableValidationError, IterableValidationNote
from cattrs.gen import make_dict_structure_fn, override

from tracker.core import values
from tracker.core.config import (
    BasicAuth,
    BearerAuth,
    ClusterDiscovery,
    Config,
    ConsulSDConfig,
    Egress,
    FileTargets,
    HttpTargets,
    LocalTargets,
    ObjectStore,
    StaticTargets,
    TargetGroup,
    TLSConfig,
    Trust,
)
from tracker.core.problems import TLS_GO_KEYS, Path, Problems, flatten, lines, raise_problems
from tracker.core.redact import redact_text
from tracker.core.targetfile import is_host_port, read_target_file
from tracker.core.trust import MIN_DISCOVERED_AGREEING, is_known
from tracker.core.values import check_target, describe, parse_duration
from tracker.core.yamlfile import read_yaml
from tracker.errors import ConfigError, ProbeError

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
        self._add(TLSConfig, files, _finish_tls, aliases=TLS_GO_KEYS)
        self._add(StaticTargets, {"targets": _list_of(_target)})
        self._add(FileTargets, {"path": self._targets_file})
        self._add(HttpTargets, {"targets": _list_of(values.http_target)})
        self._add(LocalTargets, {"paths": _list_of(self._directory)})
        self._add(Egress, {"allow": _list_of(values.cidr), "deny": _list_of(values.cidr)})
        self._add(
            ClusterDiscovery,
            {
                "rpc": _list_of(values.rpc_url),
                "interval": values.positive_duration,
                "max_targets": values.integer_in(1, 100_000),
                "versions": _list_of(values.user_agent_part),
            },
            _finish_discovery,
        )
        self._add(
            Trust,
            {
                "known_sources": _list_of(self._known_source),
                "min_agreeing_sources": values.integer_in(1, 1000),
                "max_slot_ahead": values.integer_in(0),
            },
        )
        self._add(
            ObjectStore,
            {
                "endpoint": values.endpoint_url,
                "bucket": values.bucket_name,
                "prefix": values.object_prefix,
                "addressing_style": values.addressing_style,
                # SigV4 presigned URLs live at most 7 days.
                "direct_serve_ttl": values.duration_in(1, 7 * 24 * 3600),
                "public_endpoint": values.endpoint_url,
                "lock_ttl": values.duration_in(1, 24 * 3600),
                "replica_url": values.endpoint_url,
                "replicas": _list_of(values.replica_base_url),
                "keep_previous": values.integer_in(0, 1000),
                "request_timeout": values.duration_in(0.1, 60),
                "access_key_id_file": self._secret_file,
                "secret_access_key_file": self._secret_file,
            },
            self._finish_object_store,
        )
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
            "first_byte_timeout": values.positive_duration,
            "reject_for": values.positive_duration,
            "serve_user_agents": _list_of(values.user_agent_part),
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

    def _known_source(self, value: object) -> str:
        """A target URL (as ``http_targets`` writes them), ``host:port`` (every target at that
        address) or a path (``local_targets``, resolved as they are)."""
        text = values.string(value)
        if text.startswith(("/", "./", "../")):
            return self._resolve(text)
        if "://" in text:
            return values.http_target(text)
        if not is_host_port(text):
            raise ValueError(
                "expected a target URL (http://host:port), host:port or a path (/..., ./...),"
                f" got {text!r}"
            )
        return text

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
        problems: list[tuple[Path, str]] = []
        if not auth.username:
            problems.append((("username",), "basic_auth needs a username"))
        if auth.password and auth.password_file:
            problems.append(((), "set either password or password_file, not both"))
        raise_problems(problems)
        if auth.password_file:
            auth = attrs.evolve(auth, resolved_password=self.secrets[auth.password_file])
        return auth

    def _finish_bearer_auth(self, auth: BearerAuth) -> BearerAuth:
        problems: list[tuple[Path, str]] = []
        if auth.token and auth.token_file:
            problems.append(((), "set either token or token_file, not both"))
        if not auth.token and not auth.token_file:
            problems.append(((), "set token or token_file"))
        if auth.token_file and not self.secrets[auth.token_file]:
            problems.append((("token_file",), f"the token file {auth.token_file!r} is empty"))
        raise_problems(problems)
        return attrs.evolve(auth, resolved_token=self.secrets.get(auth.token_file, auth.token))

    def _finish_object_store(self, store: ObjectStore) -> ObjectStore:
        problems: list[tuple[Path, str]] = []
        if not store.bucket:
            problems.append((("bucket",), "the bucket's name is required"))
        for key in ("access_key_id", "secret_access_key"):
            if getattr(store, key) and getattr(store, key + "_file"):
                problems.append(((), f"set either {key} or {key}_file, not both"))
        key_id = self.secrets.get(store.access_key_id_file, store.access_key_id)
        secret = self.secrets.get(store.secret_access_key_file, store.secret_access_key)
        if bool(key_id) != bool(secret):
            problems.append(
                ((), "give both access_key_id and secret_access_key, or neither (default chain)")
            )
        raise_problems(problems)
        return attrs.evolve(store, resolved_access_key_id=key_id, resolved_secret_access_key=secret)

    def _finish_consul(self, consul: ConsulSDConfig) -> ConsulSDConfig:
        if consul.token and consul.token_file:
            raise_problems([((), "set either token or token_file, not both")])
        token = self.secrets.get(consul.token_file, consul.token)
        return attrs.evolve(consul, resolved_token=token)


def _target(value: object) -> str:
    return check_target(values.string(value))


def _finish_discovery(discovery: ClusterDiscovery) -> ClusterDiscovery:
    if not discovery.rpc:
        raise_problems([(("rpc",), "at least one RPC URL is needed to ask getClusterNodes")])
    return discovery


def _finish_tls(tls: TLSConfig) -> TLSConfig:
    problems: list[tuple[Path, str]] = []
    if tls.cert_file and not tls.key_file:
        problems.append((("key_file",), "required when cert_file is set"))
    if tls.key_file and not tls.cert_file:
        problems.append((("cert_file",), "required when key_file is set"))
    raise_problems(problems)
    return tls


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
                raise Problems([((alias,), f"same setting as {key!r}; give only one of them")])
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


def _cross_problems(raw: Mapping[Any, Any]) -> list[tuple[Path, str]]:
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


def _group_name_problems(raw: Mapping[Any, Any]) -> list[tuple[Path, str]]:
    groups = raw.get("target_groups")
    groups = groups if isinstance(groups, list) else []
    first_index: dict[str, int] = {}
    problems: list[tuple[Path, str]] = []
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


def _store_problems(config: Config) -> list[tuple[Path, str]]:
    if config.object_store is None:
        return []
    if not (config.proxy_snapshot_downloads and config.proxy_snapshot_cache_dir):
        # A bucket refresh is staged in the disk cache's temp file: readers on this replica
        # and on the others follow it there, and memory stays bounded (SPEC §10).
        reason = "needs proxy_snapshot_downloads: true and a proxy_snapshot_cache_dir"
        return [(("object_store",), reason)]
    return []


def config_warnings(config: Config) -> list[str]:
    """What is valid in ``config`` but probably unintended or unguarded, one line each
    (key path first); ``load_config`` puts them in ``Config.warnings``."""
    found: list[str] = []
    if config.proxy_snapshot_cache_dir and not config.proxy_snapshot_downloads:
        found.append("proxy_snapshot_cache_dir: ignored while proxy_snapshot_downloads is false")
    if not config.target_groups:
        found.append("target_groups: none configured; the tracker will know no snapshots")
    for index, group in enumerate(config.target_groups):
        found += [f"target_groups[{index}]{line}" for line in _group_warnings(group, config)]
    return found


#: Every way a group gets targets.
_TARGET_KINDS = (
    "static_targets",
    "file_targets",
    "consul_sd_config",
    "http_targets",
    "local_targets",
    "cluster_discovery",
)


def _group_warnings(group: TargetGroup, config: Config) -> list[str]:
    found: list[str] = []
    if all(getattr(group, kind) is None for kind in _TARGET_KINDS):
        found.append(": no targets of any kind; the group stays empty")
    if group.cluster_discovery is not None and not config.rpc:
        agreeing = max(MIN_DISCOVERED_AGREEING, group.trust.min_agreeing_sources)
        found.append(
            ".cluster_discovery: no `rpc` to check slots against (max_slot_ahead): discovered"
            f" nodes that agree (at least {agreeing}) can make any slot, however far ahead,"
            " the best; set `rpc`"
        )
    if group.file_targets is not None and not os.path.lexists(group.file_targets.path):
        path = group.file_targets.path
        found.append(f".file_targets.path: {path!r} does not exist yet (re-read every scrape)")
    if group.basic_auth is not None and group.bearer_auth is not None:
        found.append(": both basic_auth and bearer_auth set; the bearer token is sent")
    return found + _unmatched_known_sources(group)


def _unmatched_known_sources(group: TargetGroup) -> list[str]:
    """A ``known_sources`` entry that names none of the group's configured targets trusts
    nothing (a typo, or a target since removed)."""
    targets = _configured_targets(group)
    found = []
    found_later = group.consul_sd_config is not None or group.cluster_discovery is not None
    for index, entry in enumerate(group.trust.known_sources):
        if any(is_known(target, {entry}) for target in targets):
            continue
        line = (
            f".trust.known_sources[{index}]: {redact_text(entry)!r} matches no configured"
            " target of the group, so it trusts nothing"
        )
        if found_later:
            line += " (unless Consul or cluster discovery finds it)"
        found.append(line)
    return found


def _configured_targets(group: TargetGroup) -> list[str]:
    """The target URLs and paths the config names (the targets' keys in the index)."""
    hosts = list(group.static_targets.targets) if group.static_targets else []
    if group.file_targets is not None and os.path.lexists(group.file_targets.path):
        with contextlib.suppress(ProbeError):  # reported as a problem of its own at load
            hosts += read_target_file(group.file_targets.path)
    targets = [group.sidecar_url(host) for host in hosts]
    if group.http_targets is not None:
        targets += group.http_targets.targets
    if group.local_targets is not None:
        targets += group.local_targets.paths
    return targets


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
    loader = _Loader(os.path.dirname(file_path))
    config: Config | None = None
    problems: list[tuple[Path, str]] = []
    try:
        config = loader.converter.structure(raw, Config)
    except Exception as exc:  # the whole tree of problems is turned into lines below
        problems = flatten(exc, ())
    problems += _cross_problems(_as_mapping(raw, {}))
    if config is not None:
        problems += _store_problems(config)
    if problems or config is None:
        raise ConfigError(lines(problems))
    return _finish_config(config, file_path)


def _finish_config(config: Config, file_path: str) -> Config:
    default_group = config.default_group
    if not default_group and config.target_groups:
        default_group = config.target_groups[0].group
    config = attrs.evolve(config, default_group=default_group, config_path=file_path)
    return attrs.evolve(config, warnings=tuple(config_warnings(config)))
