"""A self-signed certificate for the TLS tests (``openssl req -x509``)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def self_signed(folder: Path) -> tuple[Path, Path]:
    """(certificate, key): PEM files for 127.0.0.1 and localhost, valid for a day; the
    certificate is its own CA, so a client that trusts it as a CA file accepts the server."""
    cert, key = folder / "hub-cert.pem", folder / "hub-key.pem"
    if not cert.exists():
        subprocess.run(
            [
                *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
                *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"),
                *("-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
            ],
            check=True,
            capture_output=True,
        )
    return cert, key
