"""TLS material for a NATS server: a CA of its own and a server certificate it signs.

`dim up` keeps them in its data directory, `dim nats-config` in the directory it writes; clients
trust the CA (``DIM_NATS_TLS_CA``). The server certificate is good for both ends of a TLS
connection (extended key usages serverAuth and clientAuth): the members of a cluster present it
to each other on their routes, which verify it against the same CA (mutual route TLS).

Calling `server_tls` again keeps what is there while it is still good for the hosts asked for:
the CA while it is valid for another year, the server certificate while it is valid for another
month, names every host, serves both ends and was signed by that CA. Whatever is not is made
anew (a new CA means a new server certificate too).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")  # always in the server certificate
CA_DAYS = 3650
SERVER_DAYS = 825
_CA_MARGIN = dt.timedelta(days=365)  # a CA expiring sooner is replaced
_SERVER_MARGIN = dt.timedelta(days=30)  # a server certificate expiring sooner is replaced
_SKEW = dt.timedelta(minutes=5)  # valid from a little before now: clocks differ

Key = ec.EllipticCurvePrivateKey
Host = str | ipaddress.IPv4Address | ipaddress.IPv6Address
# A server certificate serves clients and, on cluster routes, is presented as a client's too.
SERVER_USAGES = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where the CA and the server's certificate and key are (PEM; keys readable by the owner
    only)."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def server_tls(directory: Path, hosts: Iterable[str] = ()) -> TlsFiles:
    """A CA and a server certificate it signed for `hosts` and `LOCAL_HOSTS`, in `directory`;
    existing files are kept while still good for them."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(
        ca_cert=directory / "ca.pem",
        ca_key=directory / "ca-key.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server-key.pem",
    )
    wanted = _hosts((*LOCAL_HOSTS, *hosts))
    now = dt.datetime.now(dt.UTC)
    ca = _load(files.ca_cert, files.ca_key)
    if ca is None or not _good_ca(*ca, now):
        ca = _new_ca(now)
        _write(files.ca_key, _key_pem(ca[1]), private=True)
        _write(files.ca_cert, ca[0].public_bytes(serialization.Encoding.PEM))
    server = _load(files.server_cert, files.server_key)
    if server is None or not _good_server(*server, ca[0], wanted, now):
        cert, key = _new_server(ca, wanted, now)
        _write(files.server_key, _key_pem(key), private=True)
        _write(files.server_cert, cert.public_bytes(serialization.Encoding.PEM))
    return files


def _hosts(names: Iterable[str]) -> set[Host]:
    """Host names (lower case) and IP addresses, each once."""
    out: set[Host] = set()
    for name in names:
        name = name.strip().strip("[]")
        if not name:
            continue
        try:
            out.add(ipaddress.ip_address(name))
        except ValueError:
            out.add(name.lower())
    return out


def _load(cert_path: Path, key_path: Path) -> tuple[x509.Certificate, Key] | None:
    """A certificate and its EC key from PEM files, or None if either is missing or unusable."""
    with contextlib.suppress(OSError, ValueError, TypeError):
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if isinstance(key, ec.EllipticCurvePrivateKey) and _same_key(cert, key):
            return cert, key
    return None


def _same_key(cert: x509.Certificate, key: Key) -> bool:
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return bool(
        cert.public_key().public_bytes(der, spki) == key.public_key().public_bytes(der, spki)
    )


def _good_ca(cert: x509.Certificate, key: Key, now: dt.datetime) -> bool:
    with contextlib.suppress(x509.ExtensionNotFound):
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        return constraints.ca and cert.not_valid_after_utc - _CA_MARGIN > now
    return False


def _good_server(
    cert: x509.Certificate, key: Key, ca: x509.Certificate, wanted: set[Host], now: dt.datetime
) -> bool:
    if cert.not_valid_after_utc - _SERVER_MARGIN <= now:
        return False
    try:
        cert.verify_directly_issued_by(ca)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    if not set(SERVER_USAGES) <= set(usages):  # one made before routes used it: made anew
        return False
    have: set[Host] = {n.lower() for n in names.get_values_for_type(x509.DNSName)}
    have |= set(names.get_values_for_type(x509.IPAddress))  # type: ignore[arg-type]
    return wanted <= have


def _new_ca(now: dt.datetime) -> tuple[x509.Certificate, Key]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dim local NATS CA")])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW)
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _new_server(
    ca: tuple[x509.Certificate, Key], hosts: set[Host], now: dt.datetime
) -> tuple[x509.Certificate, Key]:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [
        x509.DNSName(h) for h in sorted(h for h in hosts if isinstance(h, str))
    ]
    names += [
        x509.IPAddress(h) for h in sorted((h for h in hosts if not isinstance(h, str)), key=str)
    ]
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dim nats-server")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW)
        .not_valid_after(min(now + dt.timedelta(days=SERVER_DAYS), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(SERVER_USAGES)), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _key_pem(key: Key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    """Replace `path` with `data` at once (never half written); mode 0600 when `private`."""
    tmp = path.with_name(f".{path.name}.tmp")
    mode = 0o600 if private else 0o644
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.fchmod(fd, mode)  # a leftover tmp file would keep its old mode
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
