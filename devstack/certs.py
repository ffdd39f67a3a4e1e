"""A local CA and a loopback server certificate, so clients verify TLS instead of disabling it.

azure-core refuses bearer tokens over plain http, so the Azure ML emulator serves https with a
certificate issued by a throwaway CA that clients trust through `REQUESTS_CA_BUNDLE` /
`SSL_CERT_FILE`. The files are reused when present, so a client that trusted the CA once keeps
working across restarts.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SERVER_NAMES = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class CertPaths:
    """PEM files: the CA clients trust, and the server's certificate chain and private key."""

    ca_pem: Path
    server_cert_pem: Path
    server_key_pem: Path


def ensure_certs(cert_dir: Path) -> CertPaths:
    """Create the CA and server certificate in `cert_dir` unless all three files already exist."""
    paths = CertPaths(
        ca_pem=cert_dir / "ca.pem",
        server_cert_pem=cert_dir / "server.pem",
        server_key_pem=cert_dir / "server-key.pem",
    )
    if all(p.is_file() and p.stat().st_size > 0 for p in (paths.ca_pem, paths.server_cert_pem, paths.server_key_pem)):
        return paths

    import trustme  # imported here: only needed the first time

    cert_dir.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="Evergreen devstack", organization_unit_name="local CA")
    server = ca.issue_cert(*SERVER_NAMES)
    # Write to temporary names first and rename, so a concurrent reader never sees half a file.
    for target, writer in (
        (paths.server_key_pem, server.private_key_pem.write_to_path),
        (paths.server_cert_pem, server.cert_chain_pems[0].write_to_path),
        (paths.ca_pem, ca.cert_pem.write_to_path),
    ):
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        writer(str(tmp))
        if target is paths.server_key_pem:
            tmp.chmod(0o600)
        tmp.replace(target)
    log.info("created local CA and server certificate in %s", cert_dir)
    return paths
