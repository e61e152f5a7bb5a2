"""The local CA and server certificate `dim up` gives its nats-server."""

from __future__ import annotations

import ipaddress
import ssl
import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from services.nats_tls import server_tls


def _names(cert_path: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {*san.get_values_for_type(x509.DNSName)} | {
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    }


def test_a_fresh_ca_signs_a_server_certificate_for_the_hosts(tmp_path: Path) -> None:
    files = server_tls(tmp_path / "tls", ["nats.example", "10.0.0.7", "[fd00::1]"])
    assert _names(files.server_cert) == {
        "localhost",
        "127.0.0.1",
        "::1",
        "nats.example",
        "10.0.0.7",
        str(ipaddress.ip_address("fd00::1")),
    }
    for key in (files.ca_key, files.server_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    # What nats-server and a client do with them: serve the chain, verify it against the CA.
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(files.server_cert, files.server_key)
    client = ssl.create_default_context(cafile=str(files.ca_cert))
    cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    assert client.cert_store_stats()["x509_ca"] == 1


def test_good_files_are_kept_and_a_new_host_gets_a_new_server_certificate(
    tmp_path: Path,
) -> None:
    first = server_tls(tmp_path, ["nats.example"])
    before = {p: p.read_bytes() for p in (first.ca_cert, first.ca_key, first.server_cert)}
    again = server_tls(tmp_path, ["NATS.example"])  # fewer or the same hosts: nothing changes
    assert again == first
    assert {p: p.read_bytes() for p in before} == before
    server_tls(tmp_path, ["other.example"])
    assert first.ca_cert.read_bytes() == before[first.ca_cert]  # clients keep trusting it
    assert first.server_cert.read_bytes() != before[first.server_cert]
    assert {"other.example", "localhost"} <= _names(first.server_cert)


def test_a_broken_ca_is_replaced_with_the_server_certificate(tmp_path: Path) -> None:
    first = server_tls(tmp_path)
    old_server = first.server_cert.read_bytes()
    first.ca_key.write_text("garbage\n")
    server_tls(tmp_path)
    ca = x509.load_pem_x509_certificate(first.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(first.server_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    assert first.server_cert.read_bytes() != old_server
    assert stat.S_IMODE(first.ca_key.stat().st_mode) == 0o600


def _usages(cert_path: Path) -> set[x509.ObjectIdentifier]:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_the_server_certificate_serves_both_ends_of_a_cluster_route(tmp_path: Path) -> None:
    # Route TLS with `verify: true`: each member presents its certificate as a client too.
    files = server_tls(tmp_path)
    assert _usages(files.server_cert) == {
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    }


def test_a_server_certificate_for_clients_only_is_made_anew(tmp_path: Path) -> None:
    files = server_tls(tmp_path)
    ca_cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
    old = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    builder = (
        x509.CertificateBuilder()
        .subject_name(old.subject)
        .issuer_name(ca_cert.subject)
        .public_key(old.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(old.not_valid_before_utc)
        .not_valid_after(old.not_valid_after_utc)
    )
    for ext in old.extensions:  # the same, but serverAuth only (as made before)
        value = ext.value
        if isinstance(value, x509.ExtendedKeyUsage):
            value = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
        builder = builder.add_extension(value, ext.critical)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    files.server_cert.write_bytes(
        builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    )
    assert ExtendedKeyUsageOID.CLIENT_AUTH not in _usages(files.server_cert)
    server_tls(tmp_path)
    assert ExtendedKeyUsageOID.CLIENT_AUTH in _usages(files.server_cert)
