"""The cattrs converter that structures a config file: one hook per class, a check per field.

``forbid_extra_keys`` and ``detailed_validation``: an unknown key is a problem, and every
problem is collected with its key path instead of stopping at the first
(:mod:`tracker.config.problems` turns them into lines). Each field's hook is a single-value
check (:mod:`tracker.config.values`, or a path check of :mod:`tracker.config.files`); each
class's hook then runs the checks across its fields (:mod:`tracker.config.sections`). A
key with an empty (null) value is the same as leaving the key out, as in Go.

One converter per load: the path checks need the config file's directory.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

import attrs
import cattrs
from cattrs.errors import IterableValidationError, IterableValidationNote
from cattrs.gen import make_dict_structure_fn, override

from tracker.config import rankvalues, values
from tracker.config.files import FileChecks
from tracker.config.problems import TLS_GO_KEYS, Problems
from tracker.config.schema import (
    Attest,
    BasicAuth,
    BearerAuth,
    ClusterDiscovery,
    ClusterProof,
    Config,
    ConsulSDConfig,
    Egress,
    FileTargets,
    HttpTargets,
    LocalTargets,
    ObjectStore,
    Ranking,
    SourceLimits,
    SpeedTest,
    StaticTargets,
    TargetGroup,
    TLSConfig,
    Trust,
)
from tracker.config.sections import (
    finish_basic_auth,
    finish_bearer_auth,
    finish_cluster_proof,
    finish_consul,
    finish_discovery,
    finish_group_rpc,
    finish_object_store,
    finish_tls,
)
from tracker.config.values import check_target, describe
from tracker.proof.accounts.budget import beyond_the_machine

_T = TypeVar("_T")

#: A field's check: the raw YAML value in, the field's value out (ValueError: a problem).
Check = Callable[[Any], Any]


def config_converter(files: FileChecks) -> cattrs.Converter:
    """A converter that structures and checks a :class:`Config` (paths through ``files``)."""
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    for kind, check in ((str, values.string), (bool, values.boolean), (int, values.integer)):
        converter.register_structure_hook(kind, _ignore_type(check))
    _register_auth(converter, files)
    _register_targets(converter, files)
    _register_object_store(converter, files)
    _register_ranking(converter)
    group_checks = {
        "group": values.group_name,
        "scheme": values.scheme,
        "api_path": values.api_path,
        # the same form as the top-level ones (docs/configuration.md, the per-group table)
        "rpc": values.rpc_url,
        "also_rpc": list_of(values.rpc_url),
        "certificates": certificate_relays,
    }
    add_hook(converter, TargetGroup, group_checks, finish_group_rpc)
    add_hook(converter, Config, _config_fields(converter, files))
    return converter


def _register_auth(converter: cattrs.Converter, files: FileChecks) -> None:
    secrets = files.secrets
    secret = {"password_file": files.secret_file}
    add_hook(converter, BasicAuth, secret, lambda auth: finish_basic_auth(auth, secrets))
    token = {"token_file": files.secret_file}
    add_hook(converter, BearerAuth, token, lambda auth: finish_bearer_auth(auth, secrets))
    consul = {**token, "host": values.consul_host}
    add_hook(converter, ConsulSDConfig, consul, lambda sd: finish_consul(sd, secrets))
    tls_files = {name: files.readable_file for name in ("ca_file", "cert_file", "key_file")}
    looks = files.looks  # keeps the TLS files that did not answer (a hung mount)
    add_hook(
        converter, TLSConfig, tls_files, lambda tls: finish_tls(tls, looks), aliases=TLS_GO_KEYS
    )


def _register_targets(converter: cattrs.Converter, files: FileChecks) -> None:
    add_hook(converter, StaticTargets, {"targets": list_of(_target)})
    add_hook(converter, FileTargets, {"path": files.targets_file})
    add_hook(converter, HttpTargets, {"targets": list_of(values.http_target)})
    add_hook(converter, LocalTargets, {"paths": list_of(files.directory)})
    add_hook(converter, Egress, {"allow": list_of(values.cidr), "deny": list_of(values.cidr)})
    discovery = {
        "rpc": list_of(values.rpc_url),
        "interval": values.positive_duration,
        "max_targets": values.integer_in(1, 100_000),
        "versions": list_of(values.user_agent_part),
    }
    add_hook(converter, ClusterDiscovery, discovery, finish_discovery)
    trust = {
        "known_sources": list_of(files.known_source),
        "min_agreeing_sources": values.integer_in(1, 1000),
        "max_slot_ahead": values.integer_in(0),
        "require": values.proof_level,
        "loadable_by": values.loader,
    }
    add_hook(converter, Trust, trust)
    limits = {"max_transfers": values.integer_in(0, 10_000), "max_rate": values.byte_rate}
    add_hook(converter, SourceLimits, limits)
    cluster_proof = {
        "blocks": values.integer_in(1, 512),
        "deadline": values.duration_in(1, 3600),
        "also_rpc": list_of(values.rpc_url),
        "certificates": certificate_relays,
    }
    add_hook(converter, ClusterProof, cluster_proof, finish_cluster_proof)
    attest = {"key": files.signing_key, "valid_for": values.duration_in(*values.VALID_FOR_RANGE)}
    add_hook(converter, Attest, attest)


def _register_ranking(converter: cattrs.Converter) -> None:
    # Speed tests cost the sources: bounded reads, at most every 10 s; top 0 turns them off.
    speed_test = {
        "bytes": values.size_in(64 * 1024, 1024**3),
        "top": values.integer_in(0, 100),
        "interval": values.duration_in(10, 7 * 24 * 3600),
    }
    add_hook(converter, SpeedTest, speed_test)
    ranking = {
        "by": rankvalues.ranking_order,
        "replay_slots_per_second": rankvalues.positive_number,
        "slot_seconds": rankvalues.positive_number,
        "assumed_throughput": rankvalues.throughput,
        "switch_margin": rankvalues.fraction,
    }
    add_hook(converter, Ranking, ranking)


def _register_object_store(converter: cattrs.Converter, files: FileChecks) -> None:
    checks = {
        "endpoint": values.endpoint_url,
        "bucket": values.bucket_name,
        "region": values.region_name,
        "prefix": values.object_prefix,
        "addressing_style": values.addressing_style,
        # SigV4 presigned URLs live at most 7 days.
        "direct_serve_ttl": values.duration_in(1, 7 * 24 * 3600),
        "public_endpoint": values.endpoint_url,
        "lock_ttl": values.duration_in(1, 24 * 3600),
        "replica_url": values.endpoint_url,
        "replicas": list_of(values.replica_base_url),
        "keep_previous": values.integer_in(0, 1000),
        "request_timeout": values.duration_in(0.1, 60),
        "access_key_id_file": files.secret_file,
        "secret_access_key_file": files.secret_file,
    }
    secrets = files.secrets
    add_hook(converter, ObjectStore, checks, lambda store: finish_object_store(store, secrets))


def _proof_memory(value: object) -> int:
    """``prove_accounts_memory``: at least 1 MiB, at most what this process may use."""
    size = values.size_in(1024**2)(value)
    problem = beyond_the_machine(size)
    if problem:
        raise ValueError(problem)
    return size


def _config_fields(converter: cattrs.Converter, files: FileChecks) -> dict[str, Check]:
    return {
        "scrape_interval": values.positive_duration,
        "scrape_timeout": values.positive_duration,
        "shutdown_grace": values.positive_duration,
        "first_byte_timeout": values.positive_duration,
        "reject_for": values.positive_duration,
        "serve_user_agents": list_of(values.user_agent_part),
        "listen": values.address,
        "internal_listen": values.optional_address,
        "rpc": values.rpc_url,
        "public_url": values.public_url,
        "max_snapshot_age": values.integer_in(0),
        "max_target_failures": values.integer_in(1),
        "scrape_concurrency": values.integer_in(1, 10000),
        "max_connections": values.integer_in(1, 1_000_000),
        "cache_prefetch_concurrency": values.integer_in(1),
        "proxy_snapshot_cache_dir": files.cache_dir,
        "proxy_snapshot_cache_min_free": values.byte_size,
        # A manifest is read once per archive and source: at least a test validator's, at
        # most what a mainnet manifest could grow to.
        "manifest_read": values.size_in(1024**2, 16 * 1024**3),
        "prove_accounts_max": values.integer_in(1000, 1_000_000_000_000),
        # A budget below a few MiB would spill almost every account: the smallest is for tests.
        "prove_accounts_memory": _proof_memory,
        "prove_accounts_temp_dir": files.cache_dir,
        "proof_workers": values.integer_in(1, 1024),
        "target_groups": list_of(lambda raw: converter.structure(raw, TargetGroup)),
    }


def add_hook(
    converter: cattrs.Converter,
    cls: type[_T],
    checks: Mapping[str, Check],
    finish: Callable[[_T], _T] | None = None,
    aliases: Mapping[str, str] | None = None,
) -> None:
    """Register the hook of one class: checks per field, then ``finish`` on the object.
    Fields with ``metadata={"yaml": False}`` are not read from the file."""
    overrides = {name: override(struct_hook=_ignore_type(fn)) for name, fn in checks.items()}
    for field in attrs.fields(cast("type[attrs.AttrsInstance]", cls)):
        if not field.metadata.get("yaml", True):
            overrides[field.name] = override(omit=True)
    base = make_dict_structure_fn(cls, converter, **overrides)  # type: ignore[arg-type]

    def hook(value: object, _type: object) -> _T:
        obj = base(as_mapping(value, aliases or {}), cls)
        return finish(obj) if finish is not None else obj

    converter.register_structure_hook(cls, hook)


def list_of(item: Callable[[Any], _T]) -> Callable[[object], tuple[_T, ...]]:
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


def certificate_relays(value: object) -> tuple[str, ...]:
    """``certificates``: one relay's URL prefix (a string, as the key was before it took a
    list; "" none) or a list of at most :data:`~tracker.config.values.MAX_RELAYS`, each an
    http(s) URL (every bad one reported with its index; one listed twice: the section's
    finish, :func:`~tracker.config.sections.repeated_relays`)."""
    if isinstance(value, list):
        return list_of(values.relay_url)(values.relay_count(value))
    text = values.rpc_url(value)
    return (text,) if text else ()


def _index_note(index: int) -> IterableValidationNote:
    return IterableValidationNote(f"item {index}", index, object)


def _target(value: object) -> str:
    return check_target(values.string(value))


def _ignore_type(check: Callable[[Any], _T]) -> Callable[[Any, Any], _T]:
    return lambda value, _type: check(value)


def as_mapping(value: object, aliases: Mapping[str, str]) -> dict[Any, Any]:
    """The YAML mapping of one object, without null values (null = key absent, as in Go);
    an alias (``aliases``: alias -> key) is read as its key, and both given is a problem."""
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping, got {describe(value)}")
    mapping = {key: item for key, item in value.items() if item is not None}
    for alias, key in aliases.items():
        if alias in mapping:
            if key in mapping:
                raise Problems([((alias,), f"same setting as {key!r}; give only one of them")])
            mapping[key] = mapping.pop(alias)
    return mapping
