"""Tests of tracker.config: one case per validation rule, each naming its key path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers_config import load, problem_at, problems

from tracker.errors import ConfigError

# --- one case per validation rule: (YAML, key path, part of the message) ---------------------

GROUP = "target_groups:\n  - group: g\n"

RULES = [
    ("scrap_interval: 15s\n", "scrap_interval", "unknown key (did you mean 'scrape_interval'?)"),
    (GROUP + "    colour: red\n", "target_groups[0].colour", "unknown key"),
    (
        GROUP + "    basic_auth: {username: u, pass: x}\n",
        "target_groups[0].basic_auth.pass",
        "unknown",
    ),
    (
        GROUP + "    static_targets: {targets: [], extra: 1}\n",
        "target_groups[0].static_targets.extra",
        "unknown key",
    ),
    (
        GROUP + "    basic_auth: {username: u, resolved_password: x}\n",
        "target_groups[0].basic_auth.resolved_password",
        "unknown key",
    ),
    ("config_path: /x\n", "config_path", "unknown key"),
    ("target_groups:\n  - scheme: http\n", "target_groups[0].group", "required key missing"),
    (
        GROUP + "    file_targets: {}\n",
        "target_groups[0].file_targets.path",
        "required key missing",
    ),
    ("listen: true\n", "listen", "expected a string, got a boolean (quote it"),
    # an unquoted number is the text it was written as, as in the Go tracker: here a URL
    # that is none
    ("rpc: 5\n", "rpc", "not an absolute http(s) URL: '5'"),
    # A text value is never echoed: a password written as a bare boolean was, in the
    # journal and in POST /reload's answer.
    (
        GROUP + "    basic_auth: {username: u, password: yes}\n",
        "target_groups[0].basic_auth.password",
        "expected a string, got a boolean (quote it to use it as text)",
    ),
    (GROUP + "    scheme: [http]\n", "target_groups[0].scheme", "expected a string, got a list"),
    (
        "proxy_snapshot_downloads: 'sure'\n",
        "proxy_snapshot_downloads",
        "expected true or false, got a string",
    ),
    ("max_snapshot_age: 10.5\n", "max_snapshot_age", "expected an integer, got a number (10.5)"),
    ("max_snapshot_age: true\n", "max_snapshot_age", "expected an integer, got a boolean"),
    ("target_groups: {group: g}\n", "target_groups", "expected a list, got a mapping"),
    (
        GROUP + "    static_targets: {targets: '10.0.0.1:1'}\n",
        "target_groups[0].static_targets.targets",
        "expected a list, got a string",
    ),
    (
        GROUP + "    basic_auth: admin\n",
        "target_groups[0].basic_auth",
        "expected a mapping, got a string",
    ),
    ("scrape_interval: 0s\n", "scrape_interval", "must be a positive duration"),
    ("scrape_interval: -5s\n", "scrape_interval", "must not be negative"),
    ("scrape_interval: soon\n", "scrape_interval", "expected a duration"),
    ("scrape_interval: true\n", "scrape_interval", "got a boolean"),
    ("scrape_timeout: 0\n", "scrape_timeout", "must be a positive duration"),
    (
        "scrape_interval: 5s\nscrape_timeout: 6s\n",
        "scrape_timeout",
        "must not be longer than scrape_interval (6s > 5s)",
    ),
    (
        "scrape_timeout: 20s\n",
        "scrape_timeout",
        "must not be longer than scrape_interval (20s > 15s)",
    ),
    ("shutdown_grace: 0s\n", "shutdown_grace", "must be a positive duration"),
    ("first_byte_timeout: 0s\n", "first_byte_timeout", "must be a positive duration"),
    ("first_byte_timeout: '2'\n", "first_byte_timeout", "missing unit"),
    ("serve_user_agents: Firedancer\n", "serve_user_agents", "expected a list"),
    ("serve_user_agents: ['']\n", "serve_user_agents[0]", "must not be empty"),
    ('serve_user_agents: [a, "b\\tc"]\n', "serve_user_agents[1]", "printable ASCII"),
    (
        "target_groups:\n  - group: 'main net'\n",
        "target_groups[0].group",
        "must match [A-Za-z0-9_.-]+",
    ),
    ("target_groups:\n  - group: ''\n", "target_groups[0].group", "must match"),
    # The group name is a directory of the cache: "." and ".." would leave it, and names
    # starting with a dot are the cache's own temp files.
    ("target_groups:\n  - group: '.'\n", "target_groups[0].group", "must not start with"),
    ("target_groups:\n  - group: '..'\n", "target_groups[0].group", "must not start with"),
    ("target_groups:\n  - group: .hidden\n", "target_groups[0].group", "must not start with"),
    (f"target_groups:\n  - group: {'g' * 129}\n", "target_groups[0].group", "at most 128"),
    # entries of one name are one group (the Go tracker's way to mix static targets with
    # Consul), whose settings but its targets are set once
    (
        GROUP + "    scheme: https\n  - group: g\n",
        "target_groups[1].scheme",
        "the group of target_groups[0], which sets it otherwise: a group has one scheme",
    ),
    (GROUP + "    scheme: ftp\n", "target_groups[0].scheme", "scheme must be 'http' or 'https'"),
    (GROUP + "    api_path: '/a?b'\n", "target_groups[0].api_path", "must be a URL path"),
    (
        GROUP + "    static_targets: {targets: ['http://10.0.0.1:1']}\n",
        "target_groups[0].static_targets.targets[0]",
        "not a host:port target",
    ),
    (
        GROUP + "    static_targets: {targets: ['10.0.0.1:70000']}\n",
        "target_groups[0].static_targets.targets[0]",
        "port must be a number from 1 to 65535",
    ),
    (
        GROUP + "    static_targets: {targets: [':13080']}\n",
        "target_groups[0].static_targets.targets[0]",
        "missing host",
    ),
    (
        GROUP + "    static_targets: {targets: ['fe80::1:13080']}\n",
        "target_groups[0].static_targets.targets[0]",
        "needs brackets",
    ),
    (
        GROUP + "    http_targets: {targets: [foo]}\n",
        "target_groups[0].http_targets.targets[0]",
        "not an absolute http(s) URL: 'foo'",
    ),
    (
        GROUP + "    http_targets: {targets: ['ftp://h/']}\n",
        "target_groups[0].http_targets.targets[0]",
        "not an absolute http(s) URL",
    ),
    (
        GROUP + "    http_targets: {targets: ['http:///x']}\n",
        "target_groups[0].http_targets.targets[0]",
        "not an absolute http(s) URL",
    ),
    # A blank, a double quote or an angle bracket ends a URL in free text: what followed
    # one in a password would have been logged and listed unmasked.
    (
        GROUP + "    http_targets: {targets: ['http://snap:hunter\"2@10.0.0.5:8899']}\n",
        "target_groups[0].http_targets.targets[0]",
        "URL must not contain blanks, double quotes or angle brackets",
    ),
    (
        GROUP + "    http_targets: {targets: ['http://snap:a<b>c@10.0.0.5:8899']}\n",
        "target_groups[0].http_targets.targets[0]",
        "'http://***@10.0.0.5:8899'",
    ),
    (
        GROUP + "    http_targets: {targets: ['http://h:99999']}\n",
        "target_groups[0].http_targets.targets[0]",
        "port must be a number from 1 to 65535",
    ),
    # httpx decodes such a host when first read, and raised then: check-config passed it,
    # serve ended at the first scrape.
    (
        GROUP + "    http_targets: {targets: ['http://xn--zz:8899']}\n",
        "target_groups[0].http_targets.targets[0]",
        "host is not a valid internationalised name",
    ),
    (
        GROUP + "    http_targets: {targets: ['http://h/?a=1']}\n",
        "target_groups[0].http_targets.targets[0]",
        "must not have a query or fragment",
    ),
    (
        GROUP + "    http_targets: {targets: ['http://h/#top']}\n",
        "target_groups[0].http_targets.targets[0]",
        "must not have a query or fragment",
    ),
    (
        GROUP + "    basic_auth: {username: u, password: p, password_file: secret.txt}\n",
        "target_groups[0].basic_auth",
        "either password or password_file, not both",
    ),
    (
        GROUP + "    basic_auth: {username: u, password_file: missing.txt}\n",
        "target_groups[0].basic_auth.password_file",
        "cannot read '{dir}/missing.txt': No such file or directory",
    ),
    # A FIFO at a secret's path held check-config, serve and a reload: refused at once.
    (
        GROUP + "    basic_auth: {username: u, password_file: fifo}\n",
        "target_groups[0].basic_auth.password_file",
        "not a regular file: a FIFO",
    ),
    (
        GROUP + "    bearer_auth: {token: t, token_file: secret.txt}\n",
        "target_groups[0].bearer_auth",
        "either token or token_file, not both",
    ),
    (GROUP + "    bearer_auth: {}\n", "target_groups[0].bearer_auth", "set token or token_file"),
    (
        GROUP + "    bearer_auth: {token_file: missing.txt}\n",
        "target_groups[0].bearer_auth.token_file",
        "cannot read '{dir}/missing.txt'",
    ),
    (
        GROUP + "    bearer_auth: {token_file: empty.txt}\n",
        "target_groups[0].bearer_auth.token_file",
        "is empty",
    ),
    # A token that no header may carry: sent, the client's refusal quoted it whole into
    # /v1/targets, the status page and the log.
    (
        GROUP + "    bearer_auth: {token_file: spaced.txt}\n",
        "target_groups[0].bearer_auth.token_file",
        "holds a space, a line break or a character outside visible ASCII",
    ),
    (
        GROUP + "    bearer_auth: {token: 'TOK en'}\n",
        "target_groups[0].bearer_auth.token",
        "not usable in a header",
    ),
    (
        GROUP + "    consul_sd_config: {service: s, token_file: spaced.txt}\n",
        "target_groups[0].consul_sd_config.token_file",
        "not usable in a header",
    ),
    (
        GROUP + '    consul_sd_config: {service: s, token: "T\\u00e9"}\n',
        "target_groups[0].consul_sd_config.token",
        "not usable in a header",
    ),
    # Checked at load, not at the first round (a round-by-round "no Consul service name"
    # and a group with no targets, though check-config passed).
    (
        GROUP + "    consul_sd_config: {host: '127.0.0.1:8500'}\n",
        "target_groups[0].consul_sd_config.service",
        "required: the Consul service whose instances are the targets",
    ),
    (
        GROUP + "    consul_sd_config: {host: 'ftp://127.0.0.1:8500', service: s}\n",
        "target_groups[0].consul_sd_config.host",
        "not an absolute http(s) URL",
    ),
    (
        GROUP + "    consul_sd_config: {host: 'http://[::1', service: s}\n",
        "target_groups[0].consul_sd_config.host",
        "not an absolute http(s) URL",
    ),
    (
        GROUP + "    consul_sd_config: {host: 'http://consul:8500/v1', service: s}\n",
        "target_groups[0].consul_sd_config.host",
        "expected host:port or an http(s):// origin",
    ),
    (
        GROUP + "    consul_sd_config: {token_file: missing.txt}\n",
        "target_groups[0].consul_sd_config.token_file",
        "cannot read",
    ),
    (
        GROUP + "    tls_config: {ca_file: missing.pem}\n",
        "target_groups[0].tls_config.ca_file",
        "cannot read '{dir}/missing.pem'",
    ),
    (
        GROUP + "    tls_config: {ca_file: secret.txt}\n",  # readable, no certificate
        "target_groups[0].tls_config.ca_file",
        "does not load as TLS: [X509: NO_CERTIFICATE_OR_CRL_FOUND]",
    ),
    (
        GROUP + "    tls_config: {cert_file: secret.txt, key_file: secret.txt}\n",
        "target_groups[0].tls_config.cert_file",
        "does not load as TLS: [SSL]",
    ),
    (
        GROUP + "    tls_config: {ca_file: subdir}\n",
        "target_groups[0].tls_config.ca_file",
        "not a regular file: a directory",
    ),
    (
        GROUP + "    tls_config: {cert_file: missing.pem, key_file: secret.txt}\n",
        "target_groups[0].tls_config.cert_file",
        "cannot read",
    ),
    (
        GROUP + "    tls_config: {cert_file: secret.txt, key_file: missing.key}\n",
        "target_groups[0].tls_config.key_file",
        "cannot read",
    ),
    (
        GROUP + "    tls_config: {cert_file: secret.txt}\n",
        "target_groups[0].tls_config.key_file",
        "required when cert_file is set",
    ),
    (
        GROUP + "    tls_config: {key_file: secret.txt}\n",
        "target_groups[0].tls_config.cert_file",
        "required when key_file is set",
    ),
    (
        GROUP + "    tls_config: {insecure_skip_verify: 1}\n",
        "target_groups[0].tls_config.insecure_skip_verify",
        "expected true or false",
    ),
    (
        GROUP + "    file_targets: {path: ''}\n",
        "target_groups[0].file_targets.path",
        "must not be empty",
    ),
    (
        GROUP + "    file_targets: {path: subdir}\n",
        "target_groups[0].file_targets.path",
        "not a regular file: a directory",
    ),
    (
        GROUP + "    file_targets: {path: bad-targets.txt}\n",
        "target_groups[0].file_targets.path",
        "bad-targets.txt line 2: not host or host:port",
    ),
    (
        GROUP + "    local_targets: {paths: [subdir, secret.txt]}\n",
        "target_groups[0].local_targets.paths[1]",
        "not a directory: '{dir}/secret.txt'",
    ),
    (
        GROUP + "    local_targets: {paths: ['']}\n",
        "target_groups[0].local_targets.paths[0]",
        "must not be empty",
    ),
    # one ledger in two groups (or twice in one): its files are checked and held by path
    (
        GROUP + "    local_targets: {paths: [subdir]}\n"
        "  - group: h\n    local_targets: {paths: [subdir/]}\n",
        "target_groups[1].local_targets.paths[0]",
        "'{dir}/subdir' is listed already, in target_groups[0]",
    ),
    (
        GROUP + "    local_targets: {paths: [subdir, subdir]}\n",
        "target_groups[0].local_targets.paths[1]",
        "'{dir}/subdir' is listed already, in target_groups[0]",
    ),
    ("default_group: nope\n" + GROUP, "default_group", "no target group is named 'nope'"),
    ("default_group: nope\n", "default_group", "no target group is named 'nope'"),
    ("listen: '8458'\n", "listen", "not a valid address"),
    ("listen: ''\n", "listen", "not a valid address"),
    ("internal_listen: 'localhost:http'\n", "internal_listen", "port must be a number"),
    # One port for both listeners: serve could bind one only (check-config said OK).
    (
        "listen: '127.0.0.1:9000'\ninternal_listen: '127.0.0.1:9000'\n",
        "internal_listen",
        "binds the port of listen ('127.0.0.1:9000')",
    ),
    (
        "listen: ':9000'\ninternal_listen: '127.0.0.1:9000'\n",
        "internal_listen",
        "binds the port of listen (':9000')",
    ),
    # one address in two spellings (they were compared as text: serve failed to bind)
    (
        "listen: '127.0.0.1:9000'\ninternal_listen: 'localhost:9000'\n",
        "internal_listen",
        "binds the port of listen ('127.0.0.1:9000')",
    ),
    (
        "listen: '[::1]:9000'\ninternal_listen: '[0:0:0:0:0:0:0:1]:9000'\n",
        "internal_listen",
        "binds the port of listen ('[::1]:9000')",
    ),
    (
        "listen: '[::ffff:127.0.0.1]:9000'\ninternal_listen: '127.0.0.1:9000'\n",
        "internal_listen",
        "binds the port of listen ('[::ffff:127.0.0.1]:9000')",
    ),
    ("rpc: localhost:8899\n", "rpc", "not an absolute http(s) URL"),
    ("rpc: 'http://h/#x'\n", "rpc", "must not have a fragment"),
    ("public_url: tracker.example.org\n", "public_url", "not an absolute http(s) URL"),
    (
        "public_url: 'https://ops:s3cret@t.example.org/'\n",
        "public_url",
        "must not carry credentials (user:password@), got 'https://***@t.example.org/'",
    ),
    (
        "public_url: 'https://t.example.org/?x=1'\n",
        "public_url",
        "must be an origin with an optional path",
    ),
    ("max_target_failures: 0\n", "max_target_failures", "must be at least 1, got 0"),
    # more than the machine: a proof's first allocation failed and the copy was rejected
    (
        "prove_accounts_memory: 100000GiB\n",
        "prove_accounts_memory",
        "of memory this process may use",
    ),
    ("scrape_concurrency: 0\n", "scrape_concurrency", "must be from 1 to 10000, got 0"),
    ("scrape_concurrency: 10001\n", "scrape_concurrency", "must be from 1 to 10000, got 10001"),
    ("max_snapshot_age: -1\n", "max_snapshot_age", "must be at least 0, got -1"),
    ("cache_prefetch_concurrency: 0\n", "cache_prefetch_concurrency", "must be at least 1, got 0"),
    (
        "proxy_snapshot_cache_dir: secret.txt\nproxy_snapshot_downloads: true\n",
        "proxy_snapshot_cache_dir",
        "not a directory",
    ),
    # A leading ~ is no home directory here (no shell expands it): the cache went to a
    # directory named "~" beside the config, and a targets file was never read (a missing
    # one is only a warning).
    ("proxy_snapshot_cache_dir: ~/cache\n", "proxy_snapshot_cache_dir", "a leading '~'"),
    (
        GROUP + "    file_targets: {path: ~/targets.txt}\n",
        "target_groups[0].file_targets.path",
        "'~/targets.txt': a leading '~' is not expanded (no shell reads this file)",
    ),
    # The cache directory is the tracker's own: a ledger that is it, or lies in it, was
    # taken for a group's cache directory, its archives removed to make room for a refresh.
    (
        "proxy_snapshot_cache_dir: subdir\n" + GROUP + "    local_targets: {paths: [subdir]}\n",
        "proxy_snapshot_cache_dir",
        "holds the local_targets directory '{dir}/subdir' (target_groups[0])",
    ),
    (
        "proxy_snapshot_cache_dir: .\n" + GROUP + "    local_targets: {paths: [subdir]}\n",
        "proxy_snapshot_cache_dir",
        "holds the local_targets directory '{dir}/subdir' (target_groups[0])",
    ),
]


@pytest.mark.parametrize(
    ("written", "text"),
    [
        ("0123456", "0123456"),  # YAML 1.1's octal 42798 to PyYAML
        ("20240601", "20240601"),
        ("12_345", "12_345"),
        ("1e3", "1e3"),
        ("0x1F", "0x1F"),
        ("1:30", "1:30"),  # YAML 1.1's sexagesimal 90
        ("'0123456'", "0123456"),
    ],
)
def test_an_unquoted_number_where_a_string_goes_is_its_text(
    tmp_path: Path, written: str, text: str
) -> None:
    """The Go tracker's yaml.v3 reads ``password: 0123456`` into the string "0123456"; it was
    refused here ("quote it"), though the Go tracker's files must load unchanged."""
    config = load(
        tmp_path,
        GROUP + f"    basic_auth: {{username: {written}, password: {written}}}\n"
        f"    consul_sd_config: {{service: s, datacenter: {written}}}\n",
    )
    group = config.target_groups[0]
    assert group.basic_auth is not None and group.consul_sd_config is not None
    assert (group.basic_auth.username, group.basic_auth.password) == (text, text)
    assert group.consul_sd_config.datacenter == text


@pytest.mark.parametrize(("text", "path", "message"), RULES, ids=[r[1] + "|" + r[2] for r in RULES])
def test_each_rule_reports_its_key_path(tmp_path: Path, text: str, path: str, message: str) -> None:
    (tmp_path / "secret.txt").write_text("s3cret\n")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "spaced.txt").write_text("TOK-b34r3r\n\n")  # a second newline
    (tmp_path / "bad-targets.txt").write_text("10.0.0.1:13080\nhttp://10.0.0.2\n")
    (tmp_path / "subdir").mkdir()
    os.mkfifo(tmp_path / "fifo")
    line = problem_at(problems(tmp_path, text), path)
    assert message.format(dir=tmp_path) in line


@pytest.mark.parametrize(
    ("cache", "refused"),
    [
        ("ledger-link", True),  # a link to the ledger: the same directory
        ("link-to-tmp", True),  # the ledger lies in it, seen through a link
        ("ledger/cache", False),  # in the ledger: the scan of a ledger reads its top only
        ("other", False),
    ],
)
def test_a_cache_directory_holding_a_ledger_is_known_by_its_real_path(
    tmp_path: Path, cache: str, refused: bool
) -> None:
    (tmp_path / "ledger").mkdir()
    (tmp_path / "ledger-link").symlink_to(tmp_path / "ledger")
    (tmp_path / "link-to-tmp").symlink_to(tmp_path)
    text = f"proxy_snapshot_cache_dir: {cache}\n" + GROUP + "    local_targets: {paths: [ledger]}\n"
    if not refused:
        assert load(tmp_path, text).proxy_snapshot_cache_dir == str(tmp_path / cache)
        return
    line = problem_at(problems(tmp_path, text), "proxy_snapshot_cache_dir")
    assert f"holds the local_targets directory '{tmp_path}/ledger' (target_groups[0])" in line


def test_many_problems_are_reported_together(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        scrape_interval: 15s
        scrape_timeout: 1m
        listen: nowhere
        scrape_concurrency: 0
        bogus: 1
        default_group: missing
        target_groups:
          - group: a
            scheme: gopher
            http_targets: {targets: ["https://ok.example.org", "foo", "bar"]}
            basic_auth: {username: u, password_file: /nonexistent/pw}
          - group: a
            static_targets: {targets: ["10.0.0.1:13080", "x:0"]}
            unknown: true
          - 42
        """,
    )
    expected_paths = [
        "scrape_timeout",
        "listen",
        "scrape_concurrency",
        "bogus",
        "default_group",
        "target_groups[0].scheme",
        "target_groups[0].http_targets.targets[1]",
        "target_groups[0].http_targets.targets[2]",
        "target_groups[0].basic_auth.password_file",
        "target_groups[1].static_targets.targets[1]",
        "target_groups[1].unknown",
        "target_groups[2]",
    ]
    for path in expected_paths:
        problem_at(found, path)
    assert len(found) == len(expected_paths)
    assert "target_groups[0].http_targets.targets[1]: not an absolute http(s) URL: 'foo'" in found
    assert (
        "target_groups[0].basic_auth.password_file: "
        "cannot read '/nonexistent/pw': No such file or directory"
    ) in found
    assert "target_groups[2]: expected a mapping, got an integer (42)" in found


def test_config_error_message_is_one_line_per_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, "listen: x\nrpc: y\n")
    assert str(info.value).splitlines() == info.value.problems
    assert len(info.value.problems) == 2


def test_a_token_no_header_may_carry_is_refused_without_being_quoted(tmp_path: Path) -> None:
    (tmp_path / "spaced.txt").write_text("TOK-b34r3r \n")
    text = GROUP + "    bearer_auth: {token_file: spaced.txt}\n"
    line = problem_at(problems(tmp_path, text), "target_groups[0].bearer_auth.token_file")
    assert "not usable in a header" in line and "b34r3r" not in line


@pytest.mark.parametrize(
    ("given", "secrets", "environ", "host", "token"),
    [
        ({}, {}, {}, "", ""),  # Consul's default address, no token
        ({}, {}, {"CONSUL_HTTP_ADDR": "consul:8500"}, "consul:8500", ""),
        ({"host": "c:1"}, {}, {"CONSUL_HTTP_ADDR": "consul:8500"}, "c:1", ""),  # given wins
        ({}, {}, {"CONSUL_HTTP_SSL": "true"}, "https://127.0.0.1:8500", ""),
        ({}, {}, {"CONSUL_HTTP_ADDR": "c:1", "CONSUL_HTTP_SSL": "1"}, "https://c:1", ""),
        ({"host": "http://c:1"}, {}, {"CONSUL_HTTP_SSL": "true"}, "http://c:1", ""),
        ({}, {}, {"CONSUL_HTTP_SSL": "yes"}, "", ""),  # not one of Go's trues
        # token_file wins over token (both were refused: a file the Go tracker takes)
        ({"token": "t", "token_file": "/s"}, {"/s": "from-file"}, {}, "", "from-file"),
        ({"token": "t", "token_file": "/s"}, {"/s": ""}, {}, "", "t"),  # an empty file
        ({}, {}, {"CONSUL_HTTP_TOKEN": "from-env"}, "", "from-env"),
        ({"token": "t"}, {}, {"CONSUL_HTTP_TOKEN": "from-env"}, "", "t"),
    ],
)
def test_consul_is_found_and_asked_as_the_go_trackers_client_does(
    given: dict[str, str],
    secrets: dict[str, str],
    environ: dict[str, str],
    host: str,
    token: str,
) -> None:
    """An empty ``host`` is ``CONSUL_HTTP_ADDR``, ``CONSUL_HTTP_SSL`` makes it https, the
    token is ``token_file``'s (not empty), else ``token``, else ``CONSUL_HTTP_TOKEN``: what
    the Go tracker's Consul client (``api.NewClient``) reads. They were ignored (a fleet that
    sets them asked 127.0.0.1:8500 without a token and found no target)."""
    from tracker.config.schema import ConsulSDConfig
    from tracker.config.sections import finish_consul

    finished = finish_consul(ConsulSDConfig(service="s", **given), secrets, environ)
    assert (finished.host, finished.resolved_token) == (host, token)


@pytest.mark.parametrize(
    ("environ", "key", "reason"),
    [
        ({"CONSUL_HTTP_ADDR": "ftp://c:1"}, "host", "CONSUL_HTTP_ADDR: "),
        ({"CONSUL_HTTP_TOKEN": "a b"}, "token", "CONSUL_HTTP_TOKEN holds a space"),
    ],
)
def test_a_consul_environment_that_cannot_be_used_is_named(
    environ: dict[str, str], key: str, reason: str
) -> None:
    from tracker.config.schema import ConsulSDConfig
    from tracker.config.sections import finish_consul
    from tracker.errors import FieldProblems

    with pytest.raises(FieldProblems) as raised:
        finish_consul(ConsulSDConfig(service="s"), {}, environ)
    [(path, text)] = raised.value.problems
    assert path == (key,) and text.startswith(reason)


def test_basic_auth_without_a_username_is_sent_as_the_go_tracker_does(tmp_path: Path) -> None:
    """``basic_auth: {password: p}``: the Go tracker takes it and sends ``:p`` (RFC 7617
    allows an empty user-id); it was refused ("needs a username")."""
    import base64

    config = load(tmp_path, GROUP + "    basic_auth: {password: p}\n")
    [group] = config.target_groups
    assert group.authorization == "Basic " + base64.b64encode(b":p").decode()


def test_entries_of_one_name_are_one_group_as_in_the_go_tracker(tmp_path: Path) -> None:
    """The Go tracker scrapes each entry of ``target_groups`` into the group it names: two
    entries of one name are its way to mix static targets with Consul's. Refused here as a
    duplicate name, such a file did not start. One group, with the targets of both."""
    config = load(
        tmp_path,
        GROUP
        + "    static_targets: {targets: ['a:1']}\n"
        + "  - group: h\n    static_targets: {targets: ['c:3']}\n"
        + "  - group: g\n    static_targets: {targets: ['b:2', 'a:1']}\n"
        + "    consul_sd_config: {service: s}\n",
    )
    assert [g.group for g in config.target_groups] == ["g", "h"]
    g = config.target_groups[0]
    assert g.static_targets is not None and g.static_targets.targets == ("a:1", "b:2")
    assert g.consul_sd_config is not None and g.consul_sd_config.service == "s"
    assert config.group_entries == (0, 1)


def test_warnings_name_the_entry_in_the_file_after_groups_were_merged(tmp_path: Path) -> None:
    """A warning's key path is the file's: after two entries made one group, the next
    group is still the file's third entry, not the second group."""
    config = load(
        tmp_path,
        GROUP + "  - group: g\n  - group: h\n    file_targets: {path: later.txt}\n",
    )
    assert [w.split(": ", 1)[0] for w in config.warnings] == [
        "target_groups[0]",  # g: no targets of any kind
        "target_groups[2].file_targets.path",
    ]


@pytest.mark.parametrize(
    ("targets", "empty"),
    [
        ("    static_targets: {targets: []}\n", True),
        ("    http_targets: {targets: []}\n    local_targets: {paths: []}\n", True),
        ("    static_targets: {targets: []}\n    http_targets: {targets: ['http://a']}\n", False),
        ("    local_targets: {paths: [ledger]}\n", False),
        ("    file_targets: {path: later.txt}\n", False),
        ("    consul_sd_config: {service: s}\n", False),
    ],
)
def test_a_group_whose_lists_are_all_empty_is_warned_of(
    tmp_path: Path, targets: str, empty: bool
) -> None:
    """``static_targets: {targets: []}`` brings no target: a group of empty lists stays as
    empty as one without targets, and was not warned of."""
    (tmp_path / "ledger").mkdir()
    config = load(tmp_path, GROUP + targets)
    warned = any("no targets of any kind" in w for w in config.warnings)
    assert warned is empty


def test_entries_of_one_name_with_other_credentials_are_refused(tmp_path: Path) -> None:
    """The Go tracker sent each entry's credentials to its own targets: merged, one entry's
    ``basic_auth`` would go to the other's targets too. Refused at the later entry's key."""
    found = problems(
        tmp_path,
        GROUP
        + "    static_targets: {targets: ['a:1']}\n"
        + "  - group: g\n    static_targets: {targets: ['b:2']}\n"
        + "    basic_auth: {username: u, password: p}\n",
    )
    assert problem_at(found, "target_groups[1].basic_auth").startswith(
        "target_groups[1].basic_auth: the group of target_groups[0], which sets it otherwise"
    )
