"""TLS credentials and names on the wire, against real TLS servers on 127.0.0.1.

Assumption 5b of tracker/zerocopy/README.md, its canary: through the egress backend, which
connects to the address it checked (not to the URL's host name), TLS still sends and
verifies the URL's host name, as httpcore passes it to ``start_tls`` apart from the address
(a certificate for a name only; the name resolved by an injected resolver, no DNS). And a
group's client certificate goes to its sources, never to its Consul or its
``getClusterNodes`` RPC (docs/configuration.md: a group's credentials and TLS settings)."""

from __future__ import annotations

import ssl
from functools import partial
from pathlib import Path

import httpcore
import pytest
import trio
from helpers_tls import Presented, issue, serve_tls

from tracker.config.schema import Config, ConsulSDConfig, TargetGroup, TLSConfig
from tracker.discovery.probing import Probes
from tracker.net.egress import CheckingBackend, EgressPolicy
from tracker.net.httpclients import build_client

NAME = "source.example"


async def resolve(host: str, _port: int) -> list[str]:
    return {NAME: ["127.0.0.1"]}[host]


@pytest.mark.parametrize("certified", [NAME, "other.example"])
async def test_tls_through_the_egress_backend_names_and_checks_the_urls_host(
    tmp_path: Path, certified: str
) -> None:
    # The server's certificate (trusted by the client) is for ``certified``: the URL's host
    # passes, another name is refused; neither would with the address (127.0.0.1) checked.
    server = issue(tmp_path, certified, names=(certified,))
    presented = Presented()
    client_context = ssl.create_default_context()
    client_context.load_verify_locations(server.cert)
    policy = EgressPolicy.from_lists(["127.0.0.0/8"], [])
    backend = CheckingBackend(lambda: policy, httpcore.TrioBackend(), resolve)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_tls, server, presented)
        async with httpcore.AsyncConnectionPool(
            ssl_context=client_context, network_backend=backend
        ) as pool:
            url = f"https://{NAME}:{port}/"
            if certified == NAME:
                response = await pool.request("GET", url)
                assert (response.status, response.content) == (200, b"ok")
            else:
                with pytest.raises(httpcore.ConnectError) as refused:
                    await pool.request("GET", url)
                chain, cause = [], refused.value.__cause__ or refused.value.__context__
                while cause is not None:
                    chain.append(cause)
                    cause = cause.__cause__ or cause.__context__
                failures = [e for e in chain if isinstance(e, ssl.SSLCertVerificationError)]
                assert failures and "Hostname mismatch" in str(failures[0]), chain
        nursery.cancel_scope.cancel()
    assert presented.names and set(presented.names) == {NAME}  # the URL's host, not 127.0.0.1


async def test_a_groups_client_certificate_goes_to_its_sources_not_to_its_discovery(
    tmp_path: Path,
) -> None:
    # The probes' client was also the client of the group's Consul and getClusterNodes RPC:
    # they were shown the certificate that identifies the tracker to the group's sources.
    ca = issue(tmp_path, "ca")
    server = issue(tmp_path, "server", addresses=("127.0.0.1",), by=ca)
    mine = issue(tmp_path, "tracker-client", by=ca)
    tls = TLSConfig(ca_file=str(ca.cert), cert_file=str(mine.cert), key_file=str(mine.key))
    presented = Presented()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve_tls, server, presented, clients_of=ca))
        consul = ConsulSDConfig(host=f"https://127.0.0.1:{port}", service="s")
        group = TargetGroup(group="g", tls_config=tls, consul_sd_config=consul)
        probes = Probes(Config(target_groups=(group,)), resolve)
        source = build_client(group, connect_timeout=5, read_timeout=5, max_connections=1)
        try:
            discovery = probes.client("g")
            assert discovery is not None
            assert (await discovery.get(f"https://127.0.0.1:{port}/v1/catalog")).text == "ok"
            assert (await source.get(f"https://127.0.0.1:{port}/v1/snapshots")).text == "ok"
        finally:
            await source.aclose()
            await probes.aclose()
        nursery.cancel_scope.cancel()
    # the discovery's answer came through the group's CA (the server's is no system CA)
    assert presented.clients == [None, "tracker-client"]
