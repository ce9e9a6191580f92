"""Assumption 5b of tracker/zerocopy/README.md, its canary: through the egress backend, which
connects to the address it checked (not to the URL's host name), TLS still sends and
verifies the URL's host name, as httpcore passes it to ``start_tls`` apart from the address.
A real TLS server on 127.0.0.1 with a certificate for a name only; the name resolved by an
injected resolver (no DNS)."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import httpcore
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tracker.net.egress import CheckingBackend, EgressPolicy

NAME = "source.example"


def certificate(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for ``name`` (a DNS name, no IP address) and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def serve_tls(
    cert: Path, key: Path, names: list[str | None], task_status: trio.TaskStatus[int]
) -> None:
    """A TLS server on 127.0.0.1 answering every request 200 ``ok``; ``names`` gets the
    server name (SNI) each client sent."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda _sock, name, _ctx: names.append(name)  # type: ignore[assignment]

    async def answer(stream: trio.SSLStream[trio.SocketStream]) -> None:
        try:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return
                request += chunk
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        except trio.BrokenResourceError:
            return  # a client that refused the certificate
        finally:
            await trio.aclose_forcefully(stream)

    listeners = await trio.open_ssl_over_tcp_listeners(0, context, host="127.0.0.1")
    task_status.started(listeners[0].transport_listener.socket.getsockname()[1])
    await trio.serve_listeners(answer, listeners)


async def resolve(host: str, _port: int) -> list[str]:
    return {NAME: ["127.0.0.1"]}[host]


@pytest.mark.parametrize("certified", [NAME, "other.example"])
async def test_tls_through_the_egress_backend_names_and_checks_the_urls_host(
    tmp_path: Path, certified: str
) -> None:
    # The server's certificate (trusted by the client) is for ``certified``: the URL's host
    # passes, another name is refused; neither would with the address (127.0.0.1) checked.
    cert, key = certificate(tmp_path, certified)
    names: list[str | None] = []
    client_context = ssl.create_default_context()
    client_context.load_verify_locations(cert)
    policy = EgressPolicy.from_lists(["127.0.0.0/8"], [])
    backend = CheckingBackend(lambda: policy, httpcore.TrioBackend(), resolve)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_tls, cert, key, names)
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
    assert names and set(names) == {NAME}  # the URL's host, not the address connected to
