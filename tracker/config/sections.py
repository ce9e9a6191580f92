"""Checks across the fields of one config section, and across the whole file.

A section's ``finish_*`` function runs on the structured object once each of its fields
passed its own check (:mod:`tracker.config.converter`): it reports what only the fields
together say (``set either password or password_file, not both``) and fills in the resolved
secrets. :func:`file_problems` and :func:`store_problems` check what spans sections.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from tracker.config.files import PathLooks, loaded_tls
from tracker.config.problems import Path, raise_problems
from tracker.config.schema import (
    TARGET_KINDS,
    BasicAuth,
    BearerAuth,
    ClusterDiscovery,
    ClusterProof,
    Config,
    ConsulSDConfig,
    ObjectStore,
    StaticTargets,
    TargetGroup,
    TLSConfig,
    rpc_identity,
)
from tracker.config.values import consul_host, parse_address, parse_duration
from tracker.core.text import one_line
from tracker.proof.levels import Level

#: Secret files' texts by absolute path (:attr:`tracker.config.files.FileChecks.secrets`).
Secrets = Mapping[str, str]


def finish_basic_auth(auth: BasicAuth, secrets: Secrets) -> BasicAuth:
    """One password: given or read from its file. The username may be empty (RFC 7617
    allows it; the Go tracker sends ``:password`` then)."""
    problems: list[tuple[Path, str]] = []
    if auth.password and auth.password_file:
        problems.append(((), "set either password or password_file, not both"))
    raise_problems(problems)
    if auth.password_file:
        auth = attrs.evolve(auth, resolved_password=secrets[auth.password_file])
    return auth


#: What a token must be to go in a header: visible ASCII, nothing else (RFC 6750's
#: ``b64token`` and Consul's ACL ids are). A space, a line break or a control character is
#: refused at load: sent, the client library refused the header and its error quoted the
#: whole token into ``last_error``, the status page and the log.
_TOKEN = re.compile(r"[!-~]+")


def token_problem(token: str, where: str) -> str:
    """Why ``token`` (named by ``where``: ``token``, ``the token file 'x'``) cannot go in
    a header; "" when it can. The message never quotes the token."""
    if _TOKEN.fullmatch(token):
        return ""
    return (
        f"{where} holds a space, a line break or a character outside visible ASCII: "
        "not usable in a header (a token file may end with one newline)"
    )


def finish_bearer_auth(auth: BearerAuth, secrets: Secrets) -> BearerAuth:
    """Exactly one token, usable in a header: given or read from a file that is not empty."""
    problems: list[tuple[Path, str]] = []
    if auth.token and auth.token_file:
        problems.append(((), "set either token or token_file, not both"))
    if not auth.token and not auth.token_file:
        problems.append(((), "set token or token_file"))
    if auth.token_file and not secrets[auth.token_file]:
        problems.append((("token_file",), f"the token file {auth.token_file!r} is empty"))
    raise_problems(problems)
    _check_token(auth.token, auth.token_file, secrets)
    return attrs.evolve(auth, resolved_token=secrets.get(auth.token_file, auth.token))


def _check_token(token: str, token_file: str, secrets: Secrets) -> None:
    """Raise the key's problem when the token given (or read from ``token_file``) cannot
    go in a header."""
    if token_file:
        problem = token_problem(secrets[token_file], f"the token file {token_file!r}")
        raise_problems([(("token_file",), problem)] if problem else [])
    elif token:
        problem = token_problem(token, "token")
        raise_problems([(("token",), problem)] if problem else [])


def finish_object_store(store: ObjectStore, secrets: Secrets) -> ObjectStore:
    """A bucket name; both keys (given or read from files) or neither."""
    problems: list[tuple[Path, str]] = []
    if not store.bucket:
        problems.append((("bucket",), "the bucket's name is required"))
    for key in ("access_key_id", "secret_access_key"):
        if getattr(store, key) and getattr(store, key + "_file"):
            problems.append(((), f"set either {key} or {key}_file, not both"))
    key_id = secrets.get(store.access_key_id_file, store.access_key_id)
    secret = secrets.get(store.secret_access_key_file, store.secret_access_key)
    if bool(key_id) != bool(secret):
        problems.append(
            ((), "give both access_key_id and secret_access_key, or neither (default chain)")
        )
    raise_problems(problems)
    return attrs.evolve(store, resolved_access_key_id=key_id, resolved_secret_access_key=secret)


#: What a ``consul_sd_config`` without a ``service`` is told.
SERVICE_WANTED = "the Consul service whose instances are the targets"


def finish_consul(
    consul: ConsulSDConfig, secrets: Secrets, environ: Mapping[str, str] = os.environ
) -> ConsulSDConfig:
    """The service to ask, where and with which token, as the Go tracker's Consul client
    reads them: an empty ``host`` is ``CONSUL_HTTP_ADDR`` (then Consul's default), with
    ``https`` when ``CONSUL_HTTP_SSL`` is true; the token is ``token_file``'s when that is
    set and not empty (it wins over ``token``), else ``token``, else ``CONSUL_HTTP_TOKEN``."""
    if not consul.service:
        raise_problems([(("service",), f"required: {SERVICE_WANTED}")])
    host = consul.host
    if not host and environ.get("CONSUL_HTTP_ADDR", ""):
        try:
            host = consul_host(environ["CONSUL_HTTP_ADDR"])
        except ValueError as exc:
            raise_problems([(("host",), f"CONSUL_HTTP_ADDR: {exc}")])
    if "://" not in host and _true(environ.get("CONSUL_HTTP_SSL", "")):
        host = f"https://{host or DEFAULT_CONSUL}"
    read = secrets[consul.token_file] if consul.token_file else ""
    if read:
        token, key, where = read, "token_file", f"the token file {consul.token_file!r}"
    elif consul.token:
        token, key, where = consul.token, "token", "token"
    else:
        token, key, where = environ.get("CONSUL_HTTP_TOKEN", ""), "token", "CONSUL_HTTP_TOKEN"
    problem = token_problem(token, where) if token else ""
    raise_problems([((key,), problem)] if problem else [])
    return attrs.evolve(consul, host=host, resolved_token=token)


#: Where Consul's HTTP API is when nothing says otherwise (its client's default).
DEFAULT_CONSUL = "127.0.0.1:8500"


def _true(text: str) -> bool:
    """Go's ``strconv.ParseBool`` true (what the Consul client reads ``CONSUL_HTTP_SSL``
    with); anything else is false."""
    return text in ("1", "t", "T", "TRUE", "true", "True")


def finish_discovery(discovery: ClusterDiscovery) -> ClusterDiscovery:
    """At least one RPC URL to ask."""
    if not discovery.rpc:
        raise_problems([(("rpc",), "at least one RPC URL is needed to ask getClusterNodes")])
    return discovery


def finish_group_rpc(group: TargetGroup) -> TargetGroup:
    """A group's ``also_rpc`` are witnesses of its own ``rpc``, its ``certificates`` its
    own cluster's: without that ``rpc`` they would be read beside the top-level ``rpc``,
    which may be another cluster's."""
    problems: list[tuple[Path, str]] = []
    if group.also_rpc and not group.rpc:
        message = "needs the group's own rpc (cluster_proof.also_rpc are the top-level rpc's)"
        problems.append((("also_rpc",), message))
    if group.certificates and not group.rpc:
        message = (
            "needs the group's own rpc (cluster_proof.certificates are the top-level rpc's"
            " cluster's)"
        )
        problems.append((("certificates",), message))
    raise_problems(problems + repeated_relays(group.certificates))
    return group


def finish_cluster_proof(proof: ClusterProof) -> ClusterProof:
    """No certificate relay named twice (:func:`repeated_relays`)."""
    raise_problems(repeated_relays(proof.certificates))
    return proof


def repeated_relays(relays: tuple[str, ...]) -> list[tuple[Path, str]]:
    """A certificate relay listed twice (``…/certs`` and ``HTTPS://…/certs/`` are one: the
    cluster level's :func:`~tracker.config.schema.rpc_identity`) is one relay's word counted
    as two that agree (docs/http-api.md, "After the migration: finality certificates"):
    each repetition, named at its index."""
    first: dict[str, int] = {}
    problems: list[tuple[Path, str]] = []
    for at, url in enumerate(relays):
        seen = first.setdefault(rpc_identity(url), at)
        if seen != at:
            message = f"the same relay as certificates[{seen}]: one relay's word would count twice"
            problems.append((("certificates", at), message))
    return problems


def finish_tls(tls: TLSConfig, looks: PathLooks | None = None) -> TLSConfig:
    """A client certificate comes with its key, and the files load as the TLS context the
    tracker builds of them (a file that is no certificate, a key that needs a password or
    is not the certificate's): named here, not at the first connection or at ``serve``.
    ``looks``: the load's, which keeps the files that did not answer."""
    problems: list[tuple[Path, str]] = []
    if tls.cert_file and not tls.key_file:
        problems.append((("key_file",), "required when cert_file is set"))
    if tls.key_file and not tls.cert_file:
        problems.append((("cert_file",), "required when key_file is set"))
    raise_problems(problems)
    if tls.ca_file:
        _loads(("ca_file",), lambda: loaded_tls(tls.ca_file, "", "", looks))
    if tls.cert_file:
        _loads(("cert_file",), lambda: loaded_tls("", tls.cert_file, tls.key_file, looks))
    return tls


def _loads(path: Path, build: Callable[[], object]) -> None:
    try:
        build()
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise_problems([(path, one_line(f"does not load as TLS: {exc}"))])


def file_problems(raw: Mapping[Any, Any]) -> list[tuple[Path, str]]:
    """What spans sections of the raw file: group names, ``scrape_timeout`` within
    ``scrape_interval`` (checked even when other values fail, so all are reported at once)."""
    problems = _group_name_problems(raw)
    default = attrs.fields(Config).scrape_interval.default  # written once, in the schema
    interval = _lenient(lambda: parse_duration(raw.get("scrape_interval", default)))
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
        if isinstance(name, str):  # (entries of one name are one group: merge_groups)
            first_index.setdefault(name, index)
    default = raw.get("default_group")
    if isinstance(default, str) and default and default not in first_index:
        problems.append((("default_group",), f"no target group is named {default!r}"))
    return problems


def merge_groups(
    groups: tuple[TargetGroup, ...],
) -> tuple[tuple[TargetGroup, ...], tuple[int, ...], list[tuple[Path, str]]]:
    """Entries of ``target_groups`` that share a name made one group, as the Go tracker
    scrapes them into one (its way to mix static targets with Consul's): the groups, the
    index in the file of each one's first entry, and the problems (an entry whose other
    settings differ from its group's first entry: here a group has one of each).
    ``static_targets`` of the entries add up; another kind of targets may come from one of
    them; every other setting (credentials, scheme, TLS, trust...) must be the same in each
    (the Go tracker applied each entry's to its own targets: here a group has one)."""
    merged: dict[str, tuple[int, TargetGroup]] = {}
    problems: list[tuple[Path, str]] = []
    for index, group in enumerate(groups):
        first = merged.get(group.group)
        if first is None:
            merged[group.group] = (index, group)
            continue
        into, differs = _merged(first[1], group)
        if differs:
            message = (
                f"the group of target_groups[{first[0]}], which sets it otherwise: a group has"
                f" one {differs} (only its targets may come from several entries)"
            )
            problems.append((("target_groups", index, differs), message))
        merged[group.group] = (first[0], into)
    return (
        tuple(group for _first, group in merged.values()),
        tuple(first for first, _group in merged.values()),
        problems,
    )


def _merged(into: TargetGroup, entry: TargetGroup) -> tuple[TargetGroup, str]:
    """``entry`` made part of ``into``; and "" or the key of the first setting that
    differs."""
    changes: dict[str, Any] = {}
    for field in attrs.fields(TargetGroup):
        mine, theirs = getattr(into, field.name), getattr(entry, field.name)
        if field.name == "group" or theirs == mine:
            continue
        if field.name == "static_targets" and mine is not None and theirs is not None:
            changes[field.name] = StaticTargets(tuple(dict.fromkeys(mine.targets + theirs.targets)))
        elif field.name in TARGET_KINDS and (mine is None or theirs is None):
            changes[field.name] = mine if theirs is None else theirs
        else:
            return into, field.name
    return attrs.evolve(into, **changes), ""


def _lenient(compute: Callable[[], float]) -> float | None:
    try:
        return compute()
    except (KeyError, ValueError):
        return None


def store_problems(config: Config) -> list[tuple[Path, str]]:
    """``object_store`` needs the disk cache (a structured, valid ``config``)."""
    if config.object_store is None:
        return []
    if not (config.proxy_snapshot_downloads and config.proxy_snapshot_cache_dir):
        # A bucket refresh is staged in the disk cache's temp file: readers on this replica
        # and on the others follow it there, and memory stays bounded
        # (docs/http-api.md#with-an-object-store-object_store).
        reason = "needs proxy_snapshot_downloads: true and a proxy_snapshot_cache_dir"
        return [(("object_store",), reason)]
    return []


#: Hosts that bind every interface: a port of one of them is every address's port.
_EVERY_INTERFACE = ("", "0.0.0.0", "::")


def _interfaces(host: str) -> set[str]:
    """The addresses a listener's ``host`` binds, as far as the text tells: an address in
    one spelling (``0:0:0:0:0:0:0:1`` is ``::1``, ``::ffff:127.0.0.1`` is ``127.0.0.1``),
    ``localhost`` its loopback addresses, another name itself (resolving it is no check's
    business: it may resolve elsewhere at the start). Pure."""
    if host.lower() == "localhost":
        return {"127.0.0.1", "::1"}
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return {host.lower()}
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return {str(address)}


def listener_problems(config: Config) -> list[tuple[Path, str]]:
    """``internal_listen`` on ``listen``'s port and a host they share: ``serve`` could bind
    only one of them (exit 1, a restart loop under systemd). Pure."""
    if not config.internal_listen:
        return []
    try:
        public, internal = parse_address(config.listen), parse_address(config.internal_listen)
    except ValueError:
        return []  # each reported as a problem of its own
    (public_host, public_port), (internal_host, internal_port) = public, internal
    hosts = _interfaces(public_host), _interfaces(internal_host)
    shared = bool(hosts[0] & hosts[1]) or bool((hosts[0] | hosts[1]) & set(_EVERY_INTERFACE))
    if public_port == internal_port != 0 and shared:
        return [(("internal_listen",), f"binds the port of listen ({config.listen!r})")]
    return []


def local_problems(config: Config, looks: PathLooks | None = None) -> list[tuple[Path, str]]:
    """A directory of ``local_targets`` listed twice (in two groups, or twice in one): its
    files' checks, proofs and digests are kept by path, and one scan of a directory runs at
    a time, so the second listing was shown down ("the last scan has not ended") and one
    group's files went unchecked. A ledger belongs to one cluster: one group.

    And ``proxy_snapshot_cache_dir`` that is a ``local_targets`` directory or holds one
    (their real paths compared, :func:`holds`): the cache directory is the tracker's own, its
    subdirectories taken for groups' and an orphaned one's archives removed when a refresh
    lacks the room (docs/proxy.md, "Orphaned archives"), so a validator's ledger there lost
    its snapshots to the cache. Each directory's real path, the cache's too, is the load's
    ``looks`` (else looked at now: :func:`~tracker.config.files.look_at`); one that did not
    answer (a hung mount) is not compared, never waited for."""
    looked = looks if looks is not None else PathLooks()
    found: list[tuple[Path, str]] = []
    first: dict[str, int] = {}
    # its real path looked at as the directories' are: realpath stats each component, and
    # a cache directory on a hung mount held the load (docs/configuration.md, "Paths on a
    # hung mount"); one that did not answer is not compared
    cache = config.proxy_snapshot_cache_dir
    held: tuple[str, int] | None = None
    entries = config.group_entries or range(len(config.target_groups))
    for index, group in zip(entries, config.target_groups, strict=True):
        paths = group.local_targets.paths if group.local_targets is not None else ()
        for at, directory in enumerate(paths):
            key = os.path.normpath(directory)
            if key in first:
                where = ("target_groups", index, "local_targets", "paths", at)
                found.append(
                    (where, f"{directory!r} is listed already, in target_groups[{first[key]}]")
                )
                continue
            first[key] = index
            if not cache or held is not None:
                continue
            outer, look = looked.look(cache).real, looked.look(directory)
            if outer and look.real and holds(outer, look.real):
                held = (directory, index)
    if held is not None:
        message = (
            f"holds the local_targets directory {held[0]!r} (target_groups[{held[1]}]): the"
            " cache directory is the tracker's own (its subdirectories are taken for groups',"
            " their archives removed to make room); give the cache a directory of its own"
        )
        found.append((("proxy_snapshot_cache_dir",), message))
    return found


def holds(outer: str, inner: str) -> bool:
    """Whether the directory ``inner`` is ``outer`` or lies inside it; both absolute and
    normalised (real paths: a link is another name of what it points at). Pure."""
    return os.path.commonpath((outer, inner)) == outer


def proof_problems(config: Config) -> list[tuple[Path, str]]:
    """A group's ``trust.require`` above ``structure`` needs archives checked: with
    ``verify_archives: false`` nothing is read, so nothing is proven; ``accounts`` and above
    need ``prove_accounts``, without which no full would ever reach it (docs/architecture.md,
    "Proven archives")."""
    found: list[tuple[Path, str]] = []
    for index, group in enumerate(config.target_groups):
        if group.trust.loadable_by is not None:
            found.extend(_loadable_problems(config, index, group.trust.require))
        required = group.trust.require
        if required is None or required == Level.STRUCTURE:
            continue
        path = ("target_groups", index, "trust", "require")
        if not config.verify_archives:
            found.append((path, "needs verify_archives: true"))
        elif required >= Level.ACCOUNTS and not config.prove_accounts:
            found.append((path, "needs prove_accounts: true"))
    return found


def _loadable_problems(
    config: Config, index: int, required: Level | None
) -> list[tuple[Path, str]]:
    """A group's ``trust.loadable_by`` is read from the manifest: it needs archives checked
    and a level that reads it (docs/http-api.md, "Proven archives")."""
    path = ("target_groups", index, "trust", "loadable_by")
    if not config.verify_archives:
        return [(path, "needs verify_archives: true (the manifest shows what a loader refuses)")]
    if required == Level.STRUCTURE:
        why = "needs trust.require manifest or above (the manifest shows what a loader refuses)"
        return [(path, why)]
    return []
