"""Config values that name files and directories, checked when the config is loaded.

Relative paths are resolved against the config file's directory and stored absolute. Files
the tracker reads (TLS files, secrets) must be readable UTF-8 text now; a secret file's text
is kept (:attr:`FileChecks.secrets`) for the section that uses it
(:mod:`tracker.config.sections`).
"""

from __future__ import annotations

import enum
import os
import ssl
import stat
import threading
import time
from typing import TYPE_CHECKING

import attrs

from tracker.config import values
from tracker.config.targetfile import is_host_port, read_target_file
from tracker.core.cachedirs import unusable_directory
from tracker.core.smallfiles import read_small, read_small_file
from tracker.errors import ConfigError, ProbeError, StatementInvalid
from tracker.observability.redact import redact_url

if TYPE_CHECKING:
    from tracker.config.schema import Attest
    from tracker.proof.statements import Signer


class FileChecks:
    """The checks of one config file's paths; holds the secrets read on the way."""

    def __init__(self, base_dir: str) -> None:
        self.base_dir = base_dir
        #: Secret files' texts by absolute path (one trailing newline dropped).
        self.secrets: dict[str, str] = {}
        #: What each ``local_targets`` directory was found to be, once per load (the
        #: warnings and the checks across sections read it too: :class:`PathLooks`).
        self.looks = PathLooks()

    def resolve(self, value: object) -> str:
        """A string path, absolute (relative to the config's directory); ``""`` stays.
        ValueError for a leading ``~`` (not the home directory here), and for one no file
        system call can take (a NUL, a lone surrogate of a
        JSON escape): ``os.path.exists`` says False for it where ``open`` raises, so it
        passed every check here and broke the daemon at its first use."""
        text = values.string(value)
        if "\0" in text:
            raise ValueError("a path cannot hold a NUL character")
        try:
            os.fsencode(text)
        except UnicodeEncodeError:
            raise ValueError("a path must be text the file system can hold (UTF-8)") from None
        if text.startswith("~"):
            # Only a shell expands it: as a relative path, ``~/cache`` made a directory named
            # "~" beside the config file, and a targets file there was never found (a
            # missing one is only a warning: docs/configuration.md).
            raise ValueError(
                f"{text!r}: a leading '~' is not expanded (no shell reads this file): write"
                f" the path absolute, or './{text}' for a name that starts with '~'"
            )
        return os.path.abspath(os.path.join(self.base_dir, text)) if text else ""

    def readable_file(self, value: object) -> str:
        """A file the tracker reads (TLS): it must be readable UTF-8 text now."""
        path = self.resolve(value)
        if path:
            read_text(path)
        return path

    def secret_file(self, value: object) -> str:
        """A file holding a secret: read now, its text kept in :attr:`secrets`."""
        path = self.resolve(value)
        if path:
            text = read_text(path)
            # Editors end files with a newline that is not part of the secret: drop one.
            self.secrets[path] = text[:-2] if text.endswith("\r\n") else text.removesuffix("\n")
        return path

    def signing_key(self, value: object) -> str:
        """``attest.key``: a Solana keypair file that signs statements (:func:`load_signer`)."""
        path = self.resolve(value)
        if not path:
            raise ValueError("must not be empty")
        load_signer(path)
        return path

    def targets_file(self, value: object) -> str:
        """``file_targets.path``: may be missing (a warning), else must read as targets."""
        path = self.resolve(value)
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

    def known_source(self, value: object) -> str:
        """A target URL (as ``http_targets`` writes them), ``host:port`` (every target at that
        address) or a path (``local_targets``, resolved as they are)."""
        text = values.string(value)
        if text.startswith(("/", "./", "../")):
            return self.resolve(text)
        if "://" in text:
            return values.http_target(text)
        if not is_host_port(text):
            raise ValueError(
                "expected a target URL (http://host:port), host:port or a path (/..., ./...),"
                f" got {redact_url(text)!r}"
            )
        return text

    def directory(self, value: object) -> str:
        """A directory (``local_targets``): a directory now, or nothing there yet. A missing
        one is only a warning (:mod:`tracker.config.warnings`), as a missing targets file
        is: a ledger on a mount that comes up after the tracker at boot is listed every
        scrape and picked up once it appears, where a refusal (exit 2, which systemd's
        ``RestartPreventExitStatus=2`` never retries) left the fleet without a tracker until
        someone started it again. Something else at the path is an error."""
        path = self.resolve(value)
        if not path:
            raise ValueError("must not be empty")
        # Looked at in a thread within a bound (:func:`look_at`): a directory on a hung
        # mount is a warning too, where a stat held check-config, serve and every reload
        # (docs/configuration.md, the ``local_targets.paths`` row).
        if self.looks.look(path).kind is Seen.OTHER:
            raise ValueError(f"not a directory: {path!r}")
        return path

    def cache_dir(self, value: object) -> str:
        """The disk cache's directory: may be missing when it can be created, must be
        writable, never something else."""
        path = self.resolve(value)
        problem = unusable_directory(path) if path else ""
        if problem:
            raise ValueError(problem)
        return path


class Seen(enum.Enum):
    """What a path was found to be (:func:`look_at`)."""

    DIRECTORY = "directory"
    #: Nothing there (a link to nothing too), or not to be looked at (``os.path.exists``
    #: says False for both): a mount not up yet.
    MISSING = "missing"
    OTHER = "other"
    #: No answer within :data:`LOOK_BOUND` (a hung NFS or FUSE mount).
    HUNG = "hung"


@attrs.frozen
class Look:
    """What a path is, and its real path ("" unless it answered)."""

    kind: Seen
    real: str = ""


#: How long loading the config waits for one path's answer. A healthy file system answers a
#: stat in microseconds, a busy NFS server in well under a second; a mount that is hung
#: would otherwise hold check-config, serve's start and every reload behind it for good.
LOOK_BOUND = 3.0


def seen(mode: int | None) -> Seen:
    """What a path whose stat gave ``mode`` is (None: the stat failed, as for a path that
    is not there). Pure."""
    if mode is None:
        return Seen.MISSING
    return Seen.DIRECTORY if stat.S_ISDIR(mode) else Seen.OTHER


class _Looking:
    """One thread's look at one path: its answer once :attr:`done` is set."""

    def __init__(self) -> None:
        self.began = time.monotonic()
        self.done = threading.Event()
        self.answer = Look(Seen.HUNG)

    def run(self, path: str) -> None:
        mode: int | None = None
        try:
            try:
                mode = os.stat(path).st_mode
            except (OSError, ValueError):  # what makes ``os.path.exists`` say False
                mode = None
            # The real path walks the components the stat just walked (the kernel has them)
            # and is taken once here for the cache directory's check (sections.local_problems).
            self.answer = Look(seen(mode), os.path.realpath(path))
        except (OSError, ValueError):  # (realpath: a loop of links is an answer too)
            self.answer = Look(seen(mode))
        finally:
            with _LOOKING_LOCK:
                if _LOOKING.get(path) is self:
                    del _LOOKING[path]
            self.done.set()


#: The looks whose thread has not ended, by path: at most one per path however many loads
#: ask (a mount that stays hung holds one thread, never one per reload).
_LOOKING: dict[str, _Looking] = {}
_LOOKING_LOCK = threading.Lock()


def look_at(path: str, bound: float = LOOK_BOUND) -> Look:
    """What ``path`` is (one ``os.stat``, following links) and its real path, looked at in a
    daemon thread and waited for at most ``bound`` seconds from that thread's start. A path
    whose look is still running from an earlier call is not looked at again: that look is
    waited for within what is left of its bound, so a path hung longer than that answers
    :attr:`Seen.HUNG` at once. The thread of a hung path is left until it answers (a daemon:
    it never holds the exit). A thread that cannot be started answers HUNG as well."""
    with _LOOKING_LOCK:
        looking = _LOOKING.get(path)
        started = looking is None
        if looking is None:
            looking = _LOOKING[path] = _Looking()
    if started:
        thread = threading.Thread(
            target=looking.run, args=(path,), name=f"config look {path}", daemon=True
        )
        try:
            thread.start()
        except RuntimeError:  # no thread to be had (this process's limits): no answer
            with _LOOKING_LOCK:
                del _LOOKING[path]
            return Look(Seen.HUNG)
    looking.done.wait(max(0.0, looking.began + bound - time.monotonic()))
    return looking.answer if looking.done.is_set() else Look(Seen.HUNG)


class PathLooks:
    """The looks of one load: each path looked at once (:func:`look_at`), whoever asks."""

    def __init__(self, bound: float = LOOK_BOUND) -> None:
        self.bound = bound
        self._seen: dict[str, Look] = {}

    def look(self, path: str) -> Look:
        """What ``path`` is, looked at on the first ask of this load."""
        if path not in self._seen:
            self._seen[path] = look_at(path, self.bound)
        return self._seen[path]


#: The largest file a config names that is read whole (a secret, a CA bundle of TLS).
MAX_NAMED_FILE = 4 * 1024 * 1024


def read_text(path: str) -> str:
    """The file's whole text, verbatim (secrets: no ``\r`` -> ``\n``). Raises ValueError
    saying why it cannot be read: a regular file only, opened without blocking (a FIFO at
    the path held ``check-config``, ``serve`` and a reload), at most :data:`MAX_NAMED_FILE`."""
    try:
        data = read_small(path, MAX_NAMED_FILE, follow=True)
    except OSError as exc:
        raise ValueError(f"cannot read {path!r}: {exc.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"cannot read {path!r}: not UTF-8 text") from None


#: The environment variable systemd sets to the directory of a service's credentials
#: (``LoadCredential=``; systemd/README.md, "The signing key under DynamicUser=").
CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"


def load_signer(path: str) -> Signer:
    """The signer of the keypair file at ``path``. Raises ValueError saying why not: not a
    regular file (no link followed, nothing that could block: :func:`read_small_file`),
    readable by others than its owner (a key must be mode 0600), not owned by this process's
    user (:func:`key_file_problem`: a credential systemd passed is judged by its rules), or
    not a keypair (the key's bytes are never shown)."""
    # Imported where a key is read: a tracker that signs nothing never loads cryptography.
    from tracker.proof.statements import MAX_KEYPAIR, Signer

    try:
        data, info = read_small_file(path, MAX_KEYPAIR)
    except OSError as exc:
        raise ValueError(f"cannot read {path!r}: {exc.strerror}") from None
    credentials = os.environ.get(CREDENTIALS_ENV, "")
    problem = key_file_problem(path, info.st_mode, info.st_uid, os.geteuid(), credentials)
    if problem:
        raise ValueError(problem)
    try:
        return Signer.from_keypair_json(data)
    except StatementInvalid as exc:
        raise ValueError(f"{path!r}: {str(exc).removeprefix('key file: ')}") from None


def key_file_problem(path: str, mode: int, uid: int, euid: int, credentials: str) -> str | None:
    """Why the key file at ``path`` (absolute; its ``mode`` and owner ``uid``) must not be
    used by a process running as ``euid``, None when it may. Pure.

    A key of the operator's own is mode 0600 (nothing for group and others) and owned by the
    user that reads it. A file directly in ``credentials`` (``$CREDENTIALS_DIRECTORY``: systemd
    passed it with ``LoadCredential=``) is held to systemd's rules instead: systemd copies it
    read-only to a file system only the service sees, mode 0400 owned by the service's user
    (ramfs), or owned by root with an ACL that lets that user read (tmpfs: the group bits
    then show the ACL's mask, 0440). So there the owner may also be root and the group may
    read, but nobody else may write or read: a key another user can change or read is
    refused there too."""
    perms = stat.S_IMODE(mode)
    in_credentials = bool(credentials) and os.path.dirname(path) == os.path.abspath(credentials)
    if in_credentials:
        if perms & 0o027:
            return (
                f"{path!r} has mode {perms:04o}; a credential holding a signing key must be "
                "0400 or 0440 (as systemd's LoadCredential= makes it)"
            )
        if uid not in (euid, 0):
            return f"{path!r} is owned by uid {uid}, not the tracker's user or root"
        return None
    if perms & 0o077:
        return f"{path!r} has mode {perms:04o}; a signing key must be 0600"
    if uid != euid:
        return f"{path!r} is owned by uid {uid}, not the tracker's user"
    return None


def signing(attest: Attest | None) -> tuple[Signer | None, float]:
    """The daemon's signer of ``attest`` (its key loaded now: at start and on every reload)
    and how long its statements hold; ``(None, 0)`` without ``attest``. ConfigError, naming
    ``attest.key``, when the key can no longer be read (changed since the config was
    checked)."""
    if attest is None:
        return None, 0.0
    try:
        return load_signer(attest.key), attest.valid_for
    except ValueError as exc:
        raise ConfigError([f"attest.key: {exc}"]) from None


def tls_context(ca_file: str, cert_file: str, key_file: str, insecure: bool) -> ssl.SSLContext:
    """The client TLS context of a ``tls_config`` (the system's CAs without ``ca_file``). A
    key that needs a password is refused, never prompted for (a daemon has no terminal).
    Raises ssl.SSLError or OSError for files that do not load."""
    ctx = ssl.create_default_context(cafile=ca_file or None)
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file or None, password=_no_password)
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _no_password() -> str:
    raise ValueError("the key needs a password (not supported)")
