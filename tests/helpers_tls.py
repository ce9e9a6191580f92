"""Certificates for TLS servers on 127.0.0.1 (a CA, a server's, a client's), a TLS server
that tells what each client presented: its server name (SNI) and its certificate, and the
test clients' own context."""

from __future__ import annotations

import datetime
import functools
import ipaddress
import ssl
from pathlib import Path

import attrs
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from helpers_sources import read_head


@functools.cache
def client_tls() -> ssl.SSLContext:
    """A verifying client context (the system's CAs) made once per process, for the tests'
    clients as ``verify=``: httpx loads its CA store again for every client it makes (~30 ms),
    which the suite's thousands of clients paid in CPU."""
    return ssl.create_default_context()


@attrs.frozen
class Issued:
    """A certificate and its key, as PEM files."""

    cert: Path
    key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def issue(
    directory: Path,
    common: str,
    *,
    names: tuple[str, ...] = (),
    addresses: tuple[str, ...] = (),
    by: Issued | None = None,
) -> Issued:
    """A certificate for ``common`` valid for DNS ``names`` and IP ``addresses``, signed by
    ``by`` (None: self-signed, a CA), written to ``directory``."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    issuer, signer = _name(common), key
    if by is not None:
        issuer = x509.load_pem_x509_certificate(by.cert.read_bytes()).subject
        loaded = serialization.load_pem_private_key(by.key.read_bytes(), None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        signer = loaded
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=by is None, path_length=None), critical=True)
    )
    alternatives: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    alternatives += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    if alternatives:
        builder = builder.add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
    cert = builder.sign(signer, hashes.SHA256())
    issued = Issued(directory / f"{common}.pem", directory / f"{common}.key")
    issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    issued.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return issued


@attrs.define
class Presented:
    """What the clients of a :func:`serve_tls` server presented, one entry per handshake."""

    names: list[str | None] = attrs.field(factory=list)
    #: The subject's common name of each client's certificate, None without one.
    clients: list[str | None] = attrs.field(factory=list)


async def serve_tls(
    server: Issued,
    presented: Presented,
    task_status: trio.TaskStatus[int],
    *,
    clients_of: Issued | None = None,
    body: bytes = b"ok",
) -> None:
    """A TLS server on 127.0.0.1 answering every request ``200`` with ``body``; it asks for
    a client certificate (signed by ``clients_of``) without requiring one. Started with the
    port."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(server.cert, server.key)
    if clients_of is not None:
        context.load_verify_locations(clients_of.cert)
        context.verify_mode = ssl.CERT_OPTIONAL
    context.sni_callback = lambda _sock, name, _ctx: presented.names.append(name)  # type: ignore[assignment]

    async def answer(stream: trio.SSLStream[trio.SocketStream]) -> None:
        try:
            if b"\r\n\r\n" not in await read_head(stream):
                return
            peer = stream.getpeercert()
            subject = dict(x[0] for x in peer["subject"]) if peer else None
            presented.clients.append(subject["commonName"] if subject else None)
            head = f"HTTP/1.1 200 OK\r\ncontent-length: {len(body)}\r\n"
            head += "content-type: application/json\r\n\r\n"
            await stream.send_all(head.encode() + body)
        except trio.BrokenResourceError:
            return  # a client that refused the certificate
        finally:
            await trio.aclose_forcefully(stream)

    listeners = await trio.open_ssl_over_tcp_listeners(0, context, host="127.0.0.1")
    task_status.started(listeners[0].transport_listener.socket.getsockname()[1])
    await trio.serve_listeners(answer, listeners)
