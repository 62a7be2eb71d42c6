"""One-shot: the TLS material of the compose stack's Dask cluster (mutual TLS).

Writes into OUT_DIR (a volume shared read-only with the scheduler, the Dask workers and the
clinfuse worker):

* ``ca.pem`` - a private CA made for this stack only;
* ``dask.pem`` + ``dask-key.pem`` - one certificate/key signed by it, presented by the
  scheduler, every Dask worker and the clinfuse worker (the Dask client).

Dask verifies the peer's certificate on both ends, so a process without this key cannot
connect to the scheduler or a worker, submit tasks, or read results. The CA's private key is
never written: nobody can mint another certificate, and renewal means re-running this
script on an empty volume (``docker compose down`` + ``docker volume rm clinfuse_dask-tls``).
An existing, still valid set is kept (the script converges; it is safe to re-run).

Usage: ``python deploy/dask_tls.py OUT_DIR [--owner UID:GID] [--days N]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path

CA_FILE, CERT_FILE, KEY_FILE = "ca.pem", "dask.pem", "dask-key.pem"
NAMES = ["dask-scheduler", "dask-worker", "worker", "localhost"]


def _valid(out: Path, min_days: int = 30) -> bool:
    """True when a complete set exists and the certificate is valid for ``min_days``."""
    from cryptography import x509

    if not all((out / f).is_file() for f in (CA_FILE, CERT_FILE, KEY_FILE)):
        return False
    cert = x509.load_pem_x509_certificate((out / CERT_FILE).read_bytes())
    left = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    return left > dt.timedelta(days=min_days)


def generate(out: Path, days: int = 825) -> None:
    """Write a fresh CA certificate and one CA-signed certificate + key into ``out``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "clinfuse dask CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "clinfuse dask")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in NAMES]), critical=False
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    out.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    (out / CA_FILE).write_bytes(ca.public_bytes(pem))
    (out / CERT_FILE).write_bytes(cert.public_bytes(pem))
    key_path = out / KEY_FILE
    key_path.touch(mode=0o600)  # never world-readable, not even for an instant
    key_path.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--owner", help="UID:GID to own the files (the image's clinfuse user)")
    parser.add_argument("--days", type=int, default=825)
    args = parser.parse_args(argv)
    if _valid(args.out):
        print(f"dask-tls: existing certificates in {args.out} kept")
    else:
        generate(args.out, args.days)
        print(f"dask-tls: new CA and certificate written to {args.out}")
    if args.owner:
        uid, _, gid = args.owner.partition(":")
        for f in (CA_FILE, CERT_FILE, KEY_FILE):
            os.chown(args.out / f, int(uid), int(gid or uid))
    os.chmod(args.out / KEY_FILE, 0o600)
    return 0


if __name__ == "__main__":
    sys.exit(main())
