"""The local CA and server certificate `dim up` gives its nats-server."""

from __future__ import annotations

import ipaddress
import ssl
import stat
from pathlib import Path

from cryptography import x509

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
