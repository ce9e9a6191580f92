"""Parsers and checks of single config values: durations, addresses, targets, URLs, names.

Pure functions raising ValueError with a message meant for the operator; the config loader
puts the key path in front of it. Messages that quote a URL mask its userinfo and query
(:func:`tracker.observability.redact.redact_url`): error output ends up in logs and terminals.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from fractions import Fraction
from urllib.parse import urlsplit

import idna

from tracker.core.cachedirs import group_name_problem
from tracker.core.hosts import bracketed, ipv6_problem, is_authority, is_host_name
from tracker.core.text import quoted
from tracker.observability.redact import redact_url
from tracker.proof.levels import LEVEL_NAMES, LOADERS, Level

_KINDS: tuple[tuple[type, str], ...] = (
    (bool, "a boolean"),  # before int: bool is an int subclass
    (int, "an integer"),
    (float, "a number"),
    (str, "a string"),
    (list, "a list"),
    (dict, "a mapping"),
)


def kind_of(value: object) -> str:
    """What a YAML value is, never what it holds: ``an integer``, ``a list``, ``null``."""
    if value is None:
        return "null"
    return next((name for t, name in _KINDS if isinstance(value, t)), type(value).__name__)


def describe(value: object) -> str:
    """How a YAML value reads in a message: ``an integer (5)``, ``a list``, ``null``."""
    kind = kind_of(value)
    if value is None:
        return kind
    if isinstance(value, bool):
        return f"{kind} ({str(value).lower()})"
    return f"{kind} ({value!r})" if isinstance(value, int | float) else kind


_UNIT_SECONDS = {
    "ns": Fraction(1, 10**9),
    "us": Fraction(1, 10**6),
    "µs": Fraction(1, 10**6),  # U+00B5 micro sign
    "μs": Fraction(1, 10**6),  # U+03BC Greek mu; Go accepts both
    "ms": Fraction(1, 1000),
    "s": Fraction(1),
    "m": Fraction(60),
    "h": Fraction(3600),
    "d": Fraction(86400),  # beyond Go: statements' lifetimes are written in days
}
# Longer units first so that "ms" is not read as "m" followed by garbage.
_DURATION_PART = re.compile(r"([0-9]+\.?[0-9]*|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h|d)")
_PLAIN_NUMBER = re.compile(r"[0-9]+\.?[0-9]*|\.[0-9]+")
_DURATION_HINT = "expected a duration like '500ms', '15s', '1m30s' or '7d', or a number of seconds"


#: The longest duration Go has (int64 nanoseconds), seconds: a duration string longer than
#: that is refused, as Go's ``time.ParseDuration`` refuses it.
MAX_DURATION = (2**63 - 1) / 10**9


def _too_long(value: object) -> str:
    return f"duration longer than Go's longest (about 292 years): {quoted(value, 40)}"


def parse_duration(value: object) -> float:
    """Seconds in a Go-style duration (``"1m30s"``, ``"500ms"``, ``"300us"``) or a number.

    A number (int or float, not bool) is seconds. Raises ValueError for anything negative,
    malformed, not finite, or a string without a unit (``"15"``: Go refuses it too).
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{_DURATION_HINT}, got {describe(value)}")
    if not isinstance(value, str):
        # An integer is compared as it is: float() of one of hundreds of digits overflows.
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{_DURATION_HINT}, got {value!r}")
        if value < 0:
            raise ValueError(f"duration must not be negative: {quoted(value, 40)}")
        if value > MAX_DURATION:
            raise ValueError(_too_long(value))
        return float(value)
    negative, seconds = _parse_go_duration(value)
    if negative and seconds > 0:
        raise ValueError(f"duration must not be negative: {value!r}")
    if seconds > MAX_DURATION:  # float() of a longer one may overflow: an OverflowError
        raise ValueError(_too_long(value))
    return float(seconds)


def _parse_go_duration(text: str) -> tuple[bool, Fraction]:
    body = text[1:] if text[:1] in ("+", "-") else text
    if body == "0":
        return False, Fraction(0)
    total, pos = Fraction(0), 0
    while pos < len(body) and (match := _DURATION_PART.match(body, pos)):
        total += Fraction(match[1]) * _UNIT_SECONDS[match[2]]
        pos = match.end()
    if pos == 0 or pos != len(body):
        if _PLAIN_NUMBER.fullmatch(body):
            raise ValueError(f"missing unit in duration {text!r} (write e.g. '{body}s')")
        raise ValueError(f"{_DURATION_HINT}, got {text!r}")
    return text.startswith("-"), total


_PORT = re.compile(r"[0-9]{1,5}")
_ADDRESS_HINT = "expected host:port, :port or [v6addr]:port"


def _split_host_port(text: str) -> tuple[str, str | None]:
    """Split ``host[:port]`` / ``[v6]:port``; the port is None when absent. ValueError on shape."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError("malformed [v6addr]")
        problem = ipv6_problem(host)  # a zone id only an interface's name (docs/configuration.md)
        if problem:
            raise ValueError(f"{problem}: {host!r}")
        return host, (rest[1:] if rest else None)
    if text.count(":") > 1:
        raise ValueError(f"an IPv6 address needs brackets: {bracketed(text) or '[v6addr]:port'}")
    host, colon, port = text.partition(":")
    if host and not is_host_name(host):
        raise ValueError(f"not a host name or IPv4 address: {host!r}")
    return host, (port if colon else None)


def _parse_port(text: str, lowest: int) -> int:
    if not _PORT.fullmatch(text) or not lowest <= int(text) <= 65535:
        raise ValueError(f"port must be a number from {lowest} to 65535")
    return int(text)


def parse_address(text: str) -> tuple[str, int]:
    """Parse a listen address: ``host:port``, ``:port`` or ``[v6addr]:port``; port 0-65535.

    ``:port`` (all interfaces) gives host ``""``; ``format_address`` turns the pair back into a
    hypercorn bind string. Raises ValueError with the offending text.
    """
    try:
        host, port = _split_host_port(text)
        if port is None:
            raise ValueError("missing port")
        return host, _parse_port(port, 0)
    except ValueError as exc:
        raise ValueError(f"not a valid address ({exc}; {_ADDRESS_HINT}): {text!r}") from None


def format_address(host: str, port: int) -> str:
    """The inverse of :func:`parse_address`: ``host:port``, ``[v6]:port`` or ``:port``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_target(text: str) -> str:
    """Validate a sidecar target ``host[:port]`` (static or file targets); return it.

    The port may be left out (the scheme's default port). Raises ValueError otherwise.
    """
    if "/" in text:
        raise ValueError(
            f"not a host:port target (the scheme comes from the group's 'scheme'; "
            f"URLs belong in http_targets): {redact_url(text)!r}"
        )
    try:
        host, port = _split_host_port(text)
        if not host:
            raise ValueError("missing host")
        if port is not None:
            _parse_port(port, 1)
    except ValueError as exc:
        raise ValueError(f"not a host:port target ({exc}): {redact_url(text)!r}") from None
    return text


# ---------------------------------------------------------------------------------------------
# Checks of single config values: each takes the raw YAML value, returns the stored value or
# raises ValueError with the message shown after the key path.


def string(value: object) -> str:
    """A string; an unquoted YAML number is the text it was written as (``password:
    0123456`` is "0123456", as in the Go tracker: tracker.config.yamlfile.PlainInt)."""
    if isinstance(value, str):
        return value
    written = getattr(value, "yaml_text", None)
    if isinstance(written, str):
        return written
    # Its kind, never its value: a text value may be a secret (a password written as a
    # bare boolean is one to YAML), and a message goes to the journal and to the
    # answer of POST /reload.
    hint = " (quote it to use it as text)" if isinstance(value, bool | int | float) else ""
    raise ValueError(f"expected a string, got {kind_of(value)}{hint}")


# yaml.v3 reads these strings (quoted or not) into a Go bool; PyYAML turns only some into bools.
_YAML11_TRUE = ("y", "Y", "yes", "Yes", "YES", "on", "On", "ON")
_YAML11_FALSE = ("n", "N", "no", "No", "NO", "off", "Off", "OFF")


def boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if value in _YAML11_TRUE or value in _YAML11_FALSE:
        return value in _YAML11_TRUE
    raise ValueError(f"expected true or false, got {describe(value)}")


def integer(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)  # a plain int, not the file's PlainInt
    raise ValueError(f"expected an integer, got {describe(value)}")


def integer_in(lowest: int, highest: int | None = None) -> Callable[[object], int]:
    def check(value: object) -> int:
        number = integer(value)
        if number < lowest or (highest is not None and number > highest):
            bounds = f"at least {lowest}" if highest is None else f"from {lowest} to {highest}"
            raise ValueError(f"must be {bounds}, got {number}")
        return number

    return check


def above_zero(parse: Callable[[object], float], what: str) -> Callable[[object], float]:
    """The check of a value ``parse`` reads that must be above 0 (else "must be ``what``")."""

    def check(value: object) -> float:
        number = parse(value)
        if number <= 0:
            raise ValueError(f"must be {what}, got {value!r}")
        return number

    return check


#: A duration (seconds or a Go duration string) above 0.
positive_duration = above_zero(parse_duration, "a positive duration")


def address(value: object) -> str:
    parse_address(string(value))
    return string(value)


def optional_address(value: object) -> str:
    return "" if string(value) == "" else address(value)


#: Characters that end a URL in free text (besides blanks): see :func:`check_http_url`.
_ENDS_A_URL = frozenset('"<>')


def check_http_url(text: str) -> None:
    """None when ``text`` is an absolute http(s) URL the tracker can ask (its port a
    port, its host one httpx reads, no blank, quote or angle bracket, UTF-8 text); else
    ValueError, the URL masked."""
    try:
        text.encode("utf-8")  # a byte of an argument that is no UTF-8 (a surrogate escape)
        parts = urlsplit(text)
    except ValueError:
        raise ValueError(f"not an absolute http(s) URL: {redact_url(text)!r}") from None
    authority = parts.netloc.rpartition("@")[2]
    meant = bracketed(authority)
    if meant is not None:
        # Read as host:port, an unbracketed IPv6 address has a "port" of its last groups:
        # told as what it is, with the URL it meant (RFC 3986 3.2.2: an IP literal is
        # bracketed; docs/configuration.md, ``http_targets``). Colons that hold no address
        # (``host:8899:1``) are a port's problem, said below.
        userinfo = parts.netloc[: len(parts.netloc) - len(authority)]
        example = redact_url(parts._replace(netloc=userinfo + meant).geturl())
        raise ValueError(f"an IPv6 address needs brackets: {example}, got {redact_url(text)!r}")
    try:
        port = parts.port  # raises ValueError for a port out of range
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"port must be a number from 1 to 65535: {redact_url(text)!r}")
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an absolute http(s) URL: {redact_url(text)!r}")
    if ":" in parts.hostname and ipv6_problem(parts.hostname):
        # the rule of static_targets' zones (docs/configuration.md, ``http_targets``)
        raise ValueError(f"{ipv6_problem(parts.hostname)}: {redact_url(text)!r}")
    if parts.hostname.lower().startswith("xn--") or not parts.hostname.isascii():
        # httpx decodes such a host (encodes one not in ASCII) when it is first read, and
        # raises then (a target that passed the check would fail at its first scrape).
        try:
            convert = idna.encode if not parts.hostname.isascii() else idna.decode
            convert(parts.hostname.lower())
        except (idna.IDNAError, UnicodeError):
            raise ValueError(
                f"host is not a valid internationalised name: {redact_url(text)!r}"
            ) from None
    if any((c < " " or c == "\x7f") and not c.isspace() for c in text):
        # a NUL or another control character: no request line can carry it
        raise ValueError(f"a URL cannot hold a control character: {redact_url(text)!r}")
    if any(c.isspace() or c in _ENDS_A_URL for c in text):
        # Where a URL is shown in free text (a log line, an error), a blank, a double quote
        # or an angle bracket ends it, so what followed one in a password would be shown
        # unmasked (tracker/observability/redact.py); none is valid in a URL unencoded.
        raise ValueError(
            f"URL must not contain blanks, double quotes or angle brackets (percent-encode"
            f" them: %20, %22, %3C, %3E): {redact_url(text)!r}"
        )


def http_target(value: object) -> str:
    text = string(value)
    check_http_url(text)
    if "?" in text or "#" in text:
        raise ValueError(f"URL must not have a query or fragment: {redact_url(text)!r}")
    return text.rstrip("/")


def consul_host(value: object) -> str:
    """``consul_sd_config.host``: "" (Consul's default address), ``host[:port]``, or an
    ``http(s)://host[:port]`` URL with no path, query or fragment (what Go's Consul client
    takes)."""
    text = string(value)
    if text == "" or is_authority(text):
        return text
    check_http_url(text)
    parts = urlsplit(text)
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"expected host:port or an http(s):// origin, got {redact_url(text)!r}")
    return text


def rpc_url(value: object) -> str:
    text = string(value)
    if text == "":
        return text
    check_http_url(text)
    if "#" in text:
        raise ValueError(f"URL must not have a fragment: {redact_url(text)!r}")
    return text


#: The most certificate relays one cluster names (``certificates``): each is read for every
#: archive the cluster level lifts after the Alpenglow migration, and every one must agree
#: (docs/http-api.md, "After the migration: finality certificates").
MAX_RELAYS = 8


def relay_url(value: object) -> str:
    """One certificate relay of a list: an http(s) URL prefix, never empty."""
    text = rpc_url(value)
    if text == "":
        raise ValueError("expected a certificate relay's http(s) URL prefix, got an empty one")
    return text


def relay_count(value: list[object]) -> list[object]:
    """A list of certificate relays no longer than :data:`MAX_RELAYS`."""
    if len(value) > MAX_RELAYS:
        raise ValueError(f"at most {MAX_RELAYS} certificate relays, got {len(value)}")
    return value


def public_url(value: object) -> str:
    text = string(value)
    if text == "":
        return text
    check_http_url(text)
    if "?" in text or "#" in text:
        shown = redact_url(text)
        raise ValueError(f"must be an origin with an optional path prefix, got {shown!r}")
    if "@" in urlsplit(text).netloc:
        # Every URL the listings hand out starts with it: credentials would go to clients.
        raise ValueError(f"must not carry credentials (user:password@), got {redact_url(text)!r}")
    return text.rstrip("/")


def group_name(value: object) -> str:
    name = string(value)
    problem = group_name_problem(name)  # the one rule (a directory of the disk cache too)
    if problem:
        raise ValueError(problem)
    return name


def scheme(value: object) -> str:
    scheme = string(value).lower() or "http"  # "" is what Go gets from a missing key
    if scheme not in ("http", "https"):
        raise ValueError(f"scheme must be 'http' or 'https', got {value!r}")
    return scheme


def api_path(value: object) -> str:
    text = string(value)
    if any(c in text for c in "?#") or any(c.isspace() for c in text):
        raise ValueError(f"api_path must be a URL path like '/api', got {redact_url(text)!r}")
    stripped = text.strip("/")
    return f"/{stripped}" if stripped else ""


def cidr(value: object) -> str:
    """A network in CIDR notation (``10.0.0.0/8``, ``fd00::/8``) or a bare address."""
    text = string(value).strip()
    if "%" in text:
        # The standard library takes fe80::%eth0/64 and the policy then ignores the zone: an
        # address after resolution has none to match (docs/configuration.md, ``egress``).
        raise ValueError(f"a CIDR network has no zone id (%...): {text!r}")
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"not a CIDR network like '10.0.0.0/8' or 'fd00::/8': {text!r}") from None
    return text


def user_agent_part(value: object) -> str:
    """A piece of a User-Agent to match (``serve_user_agents``): non-empty printable ASCII."""
    text = string(value)
    if not text.strip():
        raise ValueError("must not be empty")
    if not (text.isascii() and text.isprintable()) or len(text) > 200:
        raise ValueError("expected printable ASCII of at most 200 characters")
    return text


_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_PREFIX = re.compile(r"[A-Za-z0-9_./-]*")


def bucket_name(value: object) -> str:
    """An S3 bucket name: 3 to 63 lower-case letters, digits, dots and hyphens."""
    name = string(value)
    if not _BUCKET.fullmatch(name) or ".." in name:
        raise ValueError(f"not an S3 bucket name (3-63 of a-z 0-9 . -), got {name!r}")
    return name


#: A region as the S3 client takes it: a host label of letters, digits and hyphens (it
#: goes into the endpoint's name and the signature's scope), not all digits.
_REGION = re.compile(r"(?![0-9]+$)(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def region_name(value: object) -> str:
    """An object store's region: 1 to 63 letters, digits and hyphens, neither starting nor
    ending with one, not digits alone (the S3 client refuses any other at start: ``serve``
    stopped with a traceback where ``check-config`` said OK)."""
    name = string(value)
    if not _REGION.fullmatch(name):
        raise ValueError(f"not a region name (1-63 of A-Z a-z 0-9 -, e.g. us-east-1), got {name!r}")
    return name


def object_prefix(value: object) -> str:
    """A key prefix inside the bucket: letters, digits and ``_ . / -``, no ``.`` or ``..``
    segment and no leading ``/``; a non-empty prefix ends with ``/`` (added when missing).
    A ``.`` segment is refused as ``..`` is: an HTTP client removes it from a URL's path
    (RFC 3986), so a presigned URL asks for another key than it signed, and SeaweedFS
    refuses to write under it (the tier never worked)."""
    text = string(value)
    if not _PREFIX.fullmatch(text) or len(text) > 256:
        raise ValueError(f"must be at most 256 of A-Z a-z 0-9 _ . / -, got {text!r}")
    segments = text.split("/")
    if text.startswith("/") or "." in segments or ".." in segments or "//" in text:
        raise ValueError(f"must be a relative key prefix like 'tracker/', got {text!r}")
    return text if text == "" or text.endswith("/") else text + "/"


def endpoint_url(value: object) -> str:
    """An S3 endpoint or a replica's URL: ``""`` or an http(s) origin with an optional path,
    no credentials, no query; stored without a trailing slash."""
    text = string(value)
    if text == "":
        return text
    check_http_url(text)
    if "?" in text or "#" in text or "@" in urlsplit(text).netloc:
        raise ValueError(f"must be an http(s) URL without credentials or query: {text!r}")
    return text.rstrip("/")


def replica_base_url(value: object) -> str:
    """A replica's base URL in ``object_store.replicas``: as :func:`endpoint_url`, not empty."""
    text = endpoint_url(value)
    if not text:
        raise ValueError("must be a replica's base URL, not empty")
    return text


def addressing_style(value: object) -> str:
    text = string(value).lower()
    if text not in ("path", "virtual"):
        raise ValueError(f"must be 'path' or 'virtual', got {value!r}")
    return text


#: The shortest and the longest life of a signed statement, seconds (``attest.valid_for``,
#: ``attest --valid-for``): shorter expires before anyone reads it, longer outlives the
#: archive by far.
VALID_FOR_RANGE = (60.0, 366 * 24 * 3600.0)


def duration_in(lowest: float, highest: float) -> Callable[[object], float]:
    """A duration of at least ``lowest`` and at most ``highest`` seconds."""

    def check(value: object) -> float:
        seconds = parse_duration(value)
        if not lowest <= seconds <= highest:
            shown = f"{duration_text(lowest)} to {duration_text(highest)}"
            raise ValueError(f"must be from {shown}, got {value!r}")
        return seconds

    return check


def duration_text(seconds: float) -> str:
    """``seconds`` as a duration is written in the config, in its largest whole unit
    (``366d``, ``10m``, ``60s``, ``0.5s``): never ``3.16224e+07s``."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s" if seconds < 1e6 else f"{int(seconds)}s"


# Digits bounded: a size of thousands of digits is refused, never turned into an infinite float.
_SIZE = re.compile(r"([0-9]{1,20}(?:\.[0-9]{1,20})?)\s*([KMGT]?)(i?)B?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes in ``10MiB``, ``512KiB``, ``1.5GB``, ``100M`` or ``4096`` (binary units for
    ``Ki``/``Mi``/..., decimal for ``K``/``M``/...; a bare number is bytes)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"expected a size like '10MiB', '512KiB' or '4096', got {text!r}")
    number, unit, binary = match.groups()
    power = " KMGT".index(unit.upper()) if unit else 0
    return int(float(number) * (1024 if binary or not unit else 1000) ** power)


#: The largest size or rate any key takes (a pebibyte: far past any disk or link).
MAX_SIZE = 2**50


def size_in(
    lowest: int, highest: int = MAX_SIZE, *, per_second: bool = False
) -> Callable[[object], int]:
    """A size from ``lowest`` to ``highest`` bytes: a whole number of bytes or a size like
    ``16MiB`` (:func:`parse_size`). ``per_second``: a rate, which may be written with ``/s``
    after it (``50MB/s``, ``50M/s``). The one rule of sizes and rates in the config."""

    def check(value: object) -> int:
        size = _size_value(value, per_second=per_second)
        if not lowest <= size <= highest:
            raise ValueError(f"must be from {lowest} to {highest} bytes, got {value!r}")
        return size

    return check


def _size_value(value: object, *, per_second: bool) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"expected a size like '16MiB' or a whole number, got {describe(value)}")
    if isinstance(value, int):
        return value
    text = value.strip()
    return parse_size(text.removesuffix("/s") if per_second else text)


#: A number of bytes (``proxy_snapshot_cache_min_free``).
byte_size = size_in(0)
#: Bytes per second (``source_limits.max_rate``): ``50MB/s``, ``50M/s`` or a number.
byte_rate = size_in(0, per_second=True)


def proof_level(value: object) -> Level:
    """A proof level (docs/architecture.md, "Proven archives"): ``structure``, ``manifest``,
    ``accounts`` or ``cluster``."""
    level = Level.parse(value) if isinstance(value, str) else None
    if level is None:
        got = repr(value) if isinstance(value, str) else describe(value)
        raise ValueError(f"must be one of {', '.join(LEVEL_NAMES)}, got {got}")
    return level


def loader(value: object) -> str:
    """A validator client whose loader a group's archives must suit (``trust.loadable_by``,
    docs/http-api.md, "Proven archives"): ``agave``."""
    if not isinstance(value, str) or value not in LOADERS:
        got = repr(value) if isinstance(value, str) else describe(value)
        raise ValueError(f"must be one of {', '.join(LOADERS)}, got {got}")
    return value
