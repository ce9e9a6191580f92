"""Masking of URL secrets: the pure functions, and the outputs that use them in-process
(log lines, metrics labels, config messages). The HTTP outputs are in test_secrets.py."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tracker.config.loading import load_config
from tracker.config.schema import BasicAuth, BearerAuth, TargetGroup, TLSConfig
from tracker.core.text import one_line, quoted
from tracker.errors import ConfigError
from tracker.observability.logs import log_event, setup_logging
from tracker.observability.metrics import Metrics
from tracker.observability.redact import has_secrets, redact_text, redact_url, redact_userinfo
from tracker.serving.httpanswer import text_answer
from tracker.web.delivery import needs_credentials

# Secrets are built around markers that cannot occur in the generated hosts and paths
# (lower case only), so "the marker is absent" means "no part of the secret survived".
SECRET, QSECRET = "SECRETPW", "QUERYKEY"
_NOISE = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=12)
_PLAIN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-.", min_size=1, max_size=12)
_PATH = st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._~@!$&'()*+,;=:"))


def _url(scheme: str, user: str, password: str, host: str, port: str, path: list[str]) -> str:
    userinfo = f"{user}:{password}@" if password else ""
    return f"{scheme}://{userinfo}{host}{port}/{'/'.join(path)}"


def _urls_with_secrets(noise: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """URLs whose password is ``noise`` around :data:`SECRET`."""
    return st.builds(
        _url,
        st.sampled_from(["http", "https", "HTTP"]),
        _PLAIN,
        st.builds(lambda a, b: a + SECRET + b, noise, noise),
        _PLAIN,
        st.sampled_from(["", ":8899", ":1"]),
        _PATH,
    )


urls_with_secrets = _urls_with_secrets(_NOISE)
queries = st.builds(lambda a, b: "?" + a + QSECRET + b, _NOISE, _NOISE)
# A URL handed to a client keeps its query (a signed link's), so a "/" ends its authority:
# a password holding one reads as a path and query ("http://u:/pw?@host/"), the shape of a
# signed URL with an "@" in its query (GCS's GoogleAccessId=name@project...), which must
# pass unchanged. No URL can carry a "/" in its userinfo unencoded (RFC 3986, 3.2.1).
_NO_SLASH = st.text(
    alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="/"), max_size=12
)
handed_urls_with_secrets = _urls_with_secrets(_NO_SLASH)


@given(urls_with_secrets, st.one_of(st.just(""), queries))
def test_redact_url_never_shows_the_password_or_the_query(url: str, query: str) -> None:
    shown = redact_url(url + query)
    assert SECRET not in shown and QSECRET not in shown
    assert shown.startswith(url.split("://")[0] + "://")
    assert has_secrets(url + query)


@given(urls_with_secrets, st.one_of(st.just(""), queries))
def test_urls_inside_messages_are_masked(url: str, query: str) -> None:
    # Free text stops a URL at a blank or a double quote: a password holding one cannot be
    # recognised inside a message (the config checks refuse such URLs, masking them whole).
    if any(c.isspace() or c in '"<>' for c in url + query):
        return
    for message in (f"bad: {url + query!r}", f"GET {url + query} failed", url + query):
        shown = redact_text(message)
        assert SECRET not in shown and QSECRET not in shown


@given(handed_urls_with_secrets)
@example("http://0:?SECRETPW@0/")  # a "?" in the password ends the authority for a parser
@example("http://0:?@SECRETPW@0/")  # and an "@" after it
@example("http://0:@?SECRETPW@0/")  # or before it
def test_redact_userinfo_hides_the_password(url: str) -> None:
    assert SECRET not in redact_userinfo(url)


def test_a_signed_url_with_an_at_sign_in_its_query_is_handed_out_whole() -> None:
    signed = "https://storage.example/b/snapshot.tar.zst?GoogleAccessId=n@p.example&Signature=x"
    assert redact_userinfo(signed) == signed
    assert redact_userinfo("https://u:p@host/path?mail=a@b") == "https://***@host/path?mail=a@b"


@given(st.builds(_url, st.just("http"), st.just(""), st.just(""), _PLAIN, st.just(""), _PATH))
def test_a_url_without_userinfo_or_query_is_unchanged(url: str) -> None:
    if "@" in url:
        return  # an "@" in the path reads like userinfo: masked generously, tested above
    assert redact_url(url) == url == redact_text(url) == redact_userinfo(url)
    assert not has_secrets(url)


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("http://user:PW@host:8899/p?key=1", "http://***@host:8899/p?***"),
        ("https://rpc.example/?api-key=K", "https://rpc.example/?***"),
        ("http://host:8899/p", "http://host:8899/p"),
        ("http://u:pa/ss@host/x", "http://***@host/x"),  # an unescaped "/" in the password
        ("http://u:p?w@host/x", "http://***"),  # "?" in the password or "@" in the query
        ("user:PW@host:8899", "***@host:8899"),  # no scheme: still userinfo
        ("http://[::1:PW@host/", "http://***@host/"),  # does not parse as a URL
        ("http://h/#frag", "http://h/#***"),
        ("//u:PW@host/x", "//***@host/x"),  # scheme-relative (a Location may be)
        ("http://u:PWPW…", "http://***"),  # cut inside its userinfo, before the "@"
        ("http://host:8899/long/pa…", "http://host:8899/long/pa…"),  # cut after the host
    ],
)
def test_redact_url_examples(raw: str, shown: str) -> None:
    assert redact_url(raw) == shown


@pytest.mark.parametrize(
    "url",
    [
        "http://user:" + "P" * 160 + "@127.0.0.1:1/nothing",
        "//user:" + "P" * 160 + "@127.0.0.1:1/nothing",
        "https://127.0.0.1:1/p?api-key=" + "P" * 160,
    ],
)
def test_a_url_quoted_and_cut_anywhere_shows_no_part_of_its_secret(url: str) -> None:
    """A peer's value is quoted and cut (tracker.core.text) before the message it is in is
    masked: cut before its ``@``, a long password was shown (the ``@`` that made it userinfo
    was cut off), and a scheme-relative one was never taken for a URL."""
    for limit in range(10, len(url) + 4):
        for shown in (
            redact_text(f"snapshot.tar.bz2: Location {quoted(url, limit)} does not name"),
            redact_text(one_line(f"Location {url} is refused", limit)),
        ):
            assert "PP" not in shown and "user" not in shown, (limit, shown)


def test_a_refusal_sent_to_a_client_masks_the_urls_it_quotes() -> None:
    """A 502's reason may quote a source's redirect (``redirect to 'http://u:pw@…' is not a
    usable URL``): the answer goes to any client."""
    answer = text_answer(502, "source 1: redirect to 'ftp://admin:PW-s3cr3t@127.0.0.1/x'")
    assert isinstance(answer.body, bytes)
    assert b"PW-s3cr3t" not in answer.body and b"admin" not in answer.body


def test_redact_userinfo_keeps_the_query_of_a_link_to_download() -> None:
    signed = "https://bucket.example/snapshot-1-x.tar.zst?X-Signature=abc"
    assert redact_userinfo(signed) == signed
    assert redact_userinfo("http://u:p@h/a?b=1") == "http://***@h/a?b=1"


def test_local_directories_are_shown_as_they_are() -> None:
    assert redact_text("/mnt/ledger@2") == "/mnt/ledger@2"


# -- which sources need credentials -----------------------------------------------------------


@pytest.mark.parametrize(
    ("group", "target", "needed"),
    [
        (TargetGroup(group="g"), "http://h:1", False),
        (TargetGroup(group="g"), "http://u:p@h:1/KEY", True),
        (TargetGroup(group="g"), "http://h:1/?api-key=k", True),
        (TargetGroup(group="g"), "/mnt/ledger@x", False),
        (
            TargetGroup(group="g", basic_auth=BasicAuth(username="u", password="p")),
            "http://h",
            True,
        ),
        (TargetGroup(group="g", bearer_auth=BearerAuth(token="t")), "http://h", True),
        (
            TargetGroup(group="g", tls_config=TLSConfig(cert_file="c", key_file="k")),
            "https://h",
            True,
        ),
        (TargetGroup(group="g", tls_config=TLSConfig(ca_file="ca")), "https://h", False),
        (None, "http://h", True),
        (TargetGroup(group="g", bearer_auth=BearerAuth(token="t")), "/mnt/ledger", False),
    ],
)
def test_needs_credentials(group: TargetGroup | None, target: str, needed: bool) -> None:
    assert needs_credentials(group, target) is needed


# -- logs -------------------------------------------------------------------------------------


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    chatty = {name: logging.getLogger(name).level for name in ("httpx", "httpcore")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in chatty.items():
        logging.getLogger(name).setLevel(old)


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.usefixtures("restore_root")
def test_every_log_line_masks_urls_wherever_they_are(fmt: str) -> None:
    stream = io.StringIO()
    setup_logging("debug", fmt, stream)  # type: ignore[arg-type]
    log = logging.getLogger("tracker.test")
    url = "http://user:SECRET@127.0.0.1:1/KEY"
    log_event(log, "info", "probe_failed", target=url, count=3, ok=True)
    log_event(log, "info", "many", urls=[url, "http://h/?api-key=SECRET"], reason=ValueError(url))
    try:
        raise RuntimeError(f"cannot reach {url}/snapshot.tar.bz2")
    except RuntimeError as exc:
        log_event(log, "error", "crashed", exc_info=exc)
    logging.getLogger("httpx").info('HTTP Request: HEAD %s "HTTP/1.1 404"', url + "?k=SECRET")
    out = stream.getvalue()
    assert "SECRET" not in out
    assert out.count("http://***@127.0.0.1:1/KEY") >= 4 and "http://h/?***" in out
    if fmt == "json":
        first = json.loads(out.splitlines()[0])
        assert (first["count"], first["ok"]) == (3, True)  # numbers and bools keep their type


# -- metrics ----------------------------------------------------------------------------------


def test_metrics_labels_mask_the_target_and_removal_follows_the_real_targets() -> None:
    metrics = Metrics(process=False)
    first, second = "http://a:SECRET1@h:1/KEY", "http://b:SECRET2@h:1/KEY"
    metrics.observe_scrape("g", first, 0.1, ok=True)
    metrics.observe_scrape("g", second, 0.1, ok=False)
    body = metrics.render()[0].decode()
    assert "SECRET" not in body and 'target="http://***@h:1/KEY"' in body
    errors = "snapshot_tracker_scrape_errors_total"
    labels = {"group": "g", "target": "http://***@h:1/KEY"}
    metrics.remove_target("g", first)  # the other target still reports under that label
    assert metrics.registry.get_sample_value(errors, labels) == 1
    metrics.remove_target("g", second)
    assert metrics.registry.get_sample_value(errors, labels) is None


# -- config messages --------------------------------------------------------------------------


def test_config_errors_name_the_key_and_mask_the_url(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text(
        "rpc: 'http://127.0.0.1:1/?api-key=SECRET#x'\n"
        "public_url: 'http://u:SECRET@127.0.0.1/?k=SECRET'\n"
        "target_groups:\n"
        "  - group: a\n"
        "    api_path: '/x?key=SECRET'\n"
        "    static_targets: {targets: ['http://u:SECRET@127.0.0.1:1']}\n"
        "    http_targets: {targets: ['http://u:SECRET@127.0.0.1:1/KEY?k=SECRET',"
        " 'ftp://u:SECRET@h', 'http://u:SEC RET@h/']}\n"
    )
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    text = "\n".join(raised.value.problems)
    for key in (
        "rpc:",
        "public_url:",
        "target_groups[0].api_path:",
        "target_groups[0].static_targets.targets[0]:",
        "target_groups[0].http_targets.targets[0]:",
        "target_groups[0].http_targets.targets[1]:",
        "target_groups[0].http_targets.targets[2]:",
    ):
        assert key in text
    assert "SECRET" not in text and "SEC" not in text
    assert "'http://***@127.0.0.1:1/KEY?***'" in text
