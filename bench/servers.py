"""The servers under test, all on 127.0.0.1: nginx (files, proxy), the tracker, a bare app.

- ``files``: nginx with ``sendfile on`` serving the archive at ``/v1/snapshot/{name}``, a
  sidecar's ``/v1/snapshots`` JSON (so the tracker can use it as a ``static_targets``
  upstream), and ``/{n}/snapshot.tar.bz2`` redirects for the discovery figure.
- ``proxy``: a second nginx, ``proxy_pass`` to ``files`` with its default buffering and
  HTTP/1.1 (keep-alive) upstream.
- the tracker: ``python -m tracker serve --config X`` with a config written here.
- ``bare``: a quart-trio hello-world on hypercorn (bench/bare_app.py), the redirect baseline.

Both nginx run one worker process: nginx's own default, and a fair match for the tracker,
which is one process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import attrs

from bench.procs import HOST, Proc, Procs, free_port, wait_for_port
from tests.archives import big_archive_name
from tracker.core.snapshots import parse_archive_name

GROUP = "bench"
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_LISTENING = re.compile(r"addresses\W{1,4}(http://[0-9.:]+)(?:,(http://[0-9.:]+))?")


def b58encode(data: bytes) -> str:
    """Bitcoin base58 (what Solana uses for hashes)."""
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = _B58[r] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


def full_name(slot: int) -> str:
    """A valid full snapshot archive name at ``slot`` (fixed hash per slot)."""
    return f"snapshot-{slot}-{b58encode(slot.to_bytes(32, 'big'))}.tar.zst"


def incremental_name(base: int, slot: int) -> str:
    """A valid incremental snapshot archive name."""
    return f"incremental-snapshot-{base}-{slot}-{b58encode(slot.to_bytes(32, 'big'))}.tar.zst"


@attrs.frozen
class Archives:
    """The archive files: ``best`` and ``old`` (slot 100), one inode, two names.

    ``best`` is a real snapshot archive of its slot, so that the tracker's archive check
    passes (docs/http-api.md, "Verified archives"); ``old`` is only ever proxied, never
    cached (not the best), so it is never checked. A hard link rather than a copy: nginx and
    the tracker then read the very same pages from the page cache, and only one file's worth
    of RAM and disk is used.
    """

    directory: Path
    size: int
    best: str = big_archive_name()
    old: str = full_name(100)

    @property
    def best_path(self) -> Path:
        return self.directory / self.best


def make_archives(directory: Path, size: int, built: Path) -> Archives:
    """The archives in ``directory``: a copy of ``built``, a real ``.tar.zst`` snapshot
    archive of about ``size`` bytes of realistic compressibility (about 3x: random runs and
    zero runs, tests/archives.py ``build_big_archive``), kept between bench runs."""
    directory.mkdir(parents=True, exist_ok=True)
    archives = Archives(directory, built.stat().st_size)
    shutil.copyfile(built, archives.best_path)
    os.link(archives.best_path, directory / archives.old)
    return archives


def sidecar_json(archives: Archives) -> str:
    """The ``/v1/snapshots`` answer of a sidecar holding both archives
    (docs/http-api.md#snapshot-sources-json)."""
    infos = []
    for name in (archives.best, archives.old):
        parsed = parse_archive_name(name)
        assert parsed is not None, name
        slot = parsed.slot
        file = {
            "file_name": name,
            "slot": slot,
            "hash": parsed.hash,
            "ext": ".tar.zst",
            "size": archives.size,
            "mod_time": "2026-01-01T00:00:00Z",
        }
        infos.append(
            {
                "slot": slot,
                "base_slot": slot,
                "hash": file["hash"],
                "files": [file],
                "size": archives.size,
            }
        )
    return json.dumps(infos)


# -- nginx ----------------------------------------------------------------------------------


def _nginx_common(work: Path, role: str) -> str:
    temp = work / f"nginx-{role}-temp"
    temp.mkdir(exist_ok=True)
    # As root the master would switch workers to "nobody", who cannot read the bench's
    # private temp dir; the user directive is ignored (with a notice) when not root.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{user}worker_processes 1;
daemon off;
master_process on;
pid {work}/nginx-{role}.pid;
error_log {work}/nginx-{role}.error.log warn;
events {{ worker_connections 4096; }}
"""


def _nginx_http_common(work: Path, role: str) -> str:
    temp = work / f"nginx-{role}-temp"
    paths = "\n".join(
        f"  {kind}_temp_path {temp}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""{paths}
  log_format bench '$request_method $uri $status $body_bytes_sent';
  access_log {work}/nginx-{role}.access.log bench;
  keepalive_requests 1000000;
  default_type application/octet-stream;
"""


#: What one connection of the paced sidecar sends per second (nginx ``limit_rate``): a fast
#: source across a network (4 Gbit/s), where loopback's 1.3 GB/s is what no source serves.
PACED_RATE = "500m"


def files_nginx_conf(work: Path, port: int, archives: Archives, www: Path, paced_port: int) -> str:
    """nginx serving the archives (sendfile on), the sidecar JSON and discovery redirects;
    ``/src/`` answers like a validator (its full alias redirects to the best archive). On
    ``paced_port`` the same sidecar sends each connection at most PACED_RATE bytes/s."""
    full, incr = full_name(1000), incremental_name(1000, 1005)
    return (
        _nginx_common(work, "files")
        + f"""http {{
{_nginx_http_common(work, "files")}
  sendfile on;
  tcp_nopush on;
  server {{
    listen {HOST}:{port};
    location = /v1/snapshots {{ default_type application/json; root {www}; }}
    location /v1/snapshot/ {{ alias {archives.directory}/; }}
    location ~ ^/(\\d+)/snapshot\\.tar\\.bz2$ {{ return 303 /$1/{full}; }}
    location ~ ^/(\\d+)/incremental-snapshot\\.tar\\.bz2$ {{ return 303 /$1/{incr}; }}
    location = /src/snapshot.tar.bz2 {{ return 303 /v1/snapshot/{archives.best}; }}
    location = /src/incremental-snapshot.tar.bz2 {{ return 404; }}
    location = /rpc {{ error_page 405 =200 $uri; default_type application/json; root {www}; }}
  }}
  server {{
    listen {HOST}:{paced_port};
    location = /v1/snapshots {{ default_type application/json; root {www}; }}
    location /v1/snapshot/ {{ alias {archives.directory}/; limit_rate {PACED_RATE}; }}
  }}
}}
"""
    )


def node_address(n: int) -> str:
    """The loopback address of cluster node ``n`` (127.1.x.y: nothing else listens there)."""
    return f"127.1.{n // 250}.{n % 250 + 1}"


def nodes_nginx_conf(
    work: Path, port: int, count: int, archives: Archives, role: str = "nodes"
) -> str:
    """nginx as ``count`` validators, one listening socket each (``node_address(n):port``),
    each redirecting its full alias to the best archive (HEAD of which gives its size);
    ``role`` names its files."""
    listens = "\n".join(f"    listen {node_address(n)}:{port};" for n in range(count))
    return (
        _nginx_common(work, role).replace("worker_connections 4096", "worker_connections 32768")
        + f"""worker_rlimit_nofile 65536;
http {{
{_nginx_http_common(work, role)}
  access_log off;
  server {{
{listens}
    root {archives.directory};
    location = /snapshot.tar.bz2 {{ return 303 /{archives.best}; }}
    location = /incremental-snapshot.tar.bz2 {{ return 404; }}
  }}
}}
"""
    )


def proxy_nginx_conf(work: Path, port: int, upstream_port: int) -> str:
    """nginx proxying everything to the files nginx: default buffering, HTTP/1.1 upstream."""
    return (
        _nginx_common(work, "proxy")
        + f"""http {{
{_nginx_http_common(work, "proxy")}
  upstream files {{ server {HOST}:{upstream_port}; keepalive 32; }}
  server {{
    listen {HOST}:{port};
    location / {{
      proxy_pass http://files;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""
    )


def cache_nginx_conf(work: Path, port: int, upstream_port: int, cache_dir: Path) -> str:
    """nginx filling a ``proxy_cache`` from the files nginx: what an operator would run
    instead of the tracker's disk cache. The cache is on the tracker's file system (the bench's
    work dir) and written in place (``use_temp_path=off``); the query is part of the key, so
    each run asks for a key never cached before."""
    return (
        _nginx_common(work, "cache")
        + f"""http {{
{_nginx_http_common(work, "cache")}
  upstream files {{ server {HOST}:{upstream_port}; keepalive 32; }}
  proxy_cache_path {cache_dir} levels=1:2 keys_zone=archives:10m max_size=100g inactive=1d
                   use_temp_path=off;
  server {{
    listen {HOST}:{port};
    location / {{
      proxy_pass http://files;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache archives;
      proxy_cache_key $uri$is_args$args;
      proxy_cache_valid 200 1d;
      proxy_cache_lock on;
    }}
  }}
}}
"""
    )


@attrs.frozen
class Nginx:
    proc: Proc
    port: int
    access_log: Path

    @property
    def address(self) -> tuple[str, int]:
        return (HOST, self.port)

    def log_size(self) -> int:
        """The access log's current length (read the requests after it with ``sent_bytes``)."""
        return self.access_log.stat().st_size if self.access_log.exists() else 0

    def sent_bytes(self, since: int, uri_prefix: str) -> int:
        """Body bytes sent for requests under ``uri_prefix`` logged after offset ``since``."""
        with open(self.access_log, "rb") as f:
            f.seek(since)
            lines = f.read().decode().splitlines()
        total = 0
        for line in lines:
            _method, uri, _status, sent = line.split()
            if uri.startswith(uri_prefix):
                total += int(sent)
        return total


def start_nginx(
    procs: Procs, nginx: str, work: Path, role: str, conf: str, port: int, host: str = HOST
) -> Nginx:
    """Write ``conf`` and run nginx in the foreground (``daemon off``) as a bench child."""
    path = work / f"nginx-{role}.conf"
    path.write_text(conf)
    argv = [nginx, "-c", str(path), "-p", str(work), "-e", str(work / f"nginx-{role}.err")]
    # SIGKILLed with the bench its master would orphan its workers: a SIGTERM it ends them on
    proc = procs.start(f"nginx-{role}", argv, death_signal=signal.SIGTERM)
    wait_for_port(proc, port, host)
    return Nginx(proc, port, work / f"nginx-{role}.access.log")


# -- the tracker ----------------------------------------------------------------------------


@attrs.frozen
class Tracker:
    proc: Proc
    base: str
    internal: str

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.base.removeprefix("http://").rsplit(":", 1)
        return (host, int(port))

    @property
    def internal_address(self) -> tuple[str, int]:
        host, port = self.internal.removeprefix("http://").rsplit(":", 1)
        return (host, int(port))


def tracker_config(**keys: Any) -> dict[str, Any]:
    """A tracker config on 127.0.0.1 (ephemeral ports) with ``keys`` on top."""
    return {"listen": f"{HOST}:0", "internal_listen": f"{HOST}:0", **keys}


def sidecar_group(upstream_port: int) -> dict[str, Any]:
    return {"group": GROUP, "static_targets": {"targets": [f"{HOST}:{upstream_port}"]}}


def start_tracker(
    procs: Procs,
    name: str,
    work: Path,
    config: dict[str, Any],
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> Tracker:
    """Run ``python -m tracker serve`` with ``config`` (JSON is YAML); wait until it listens.

    ``env``: extra environment variables (``--tracker-env``), e.g. ``MALLOC_ARENA_MAX=1``, or
    ``PYTHONPATH=DIR`` to measure another copy of the tracker package.
    """
    path = work / f"{name}.yml"
    path.write_text(json.dumps(config, indent=2))
    # Default log level: the "listening" event that gives the ports is an info line.
    argv = [sys.executable, "-m", "tracker", "serve", "--config", str(path)]
    # cwd: the work dir, so that `-m tracker` is the installed package (or PYTHONPATH's), not
    # whatever directory the bench was started from.
    proc = procs.start(name, argv, env={**os.environ, **env} if env else None, cwd=work)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        proc.check_alive()
        m = _LISTENING.search(proc.log())
        if m:
            return Tracker(proc, m[1], m[2] or "")
        time.sleep(0.05)
    raise RuntimeError(f"{name} did not report its listening addresses in {timeout:g}s")


def start_bare(procs: Procs, timeout: float = 30.0) -> tuple[Proc, tuple[str, int]]:
    """Run bench/bare_app.py (quart-trio hello-world on hypercorn); its address."""
    port = free_port()
    app = Path(__file__).with_name("bare_app.py")
    proc = procs.start("bare", [sys.executable, str(app), f"{HOST}:{port}"])
    wait_for_port(proc, port, timeout=timeout)
    return proc, (HOST, port)
