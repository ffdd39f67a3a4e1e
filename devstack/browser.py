"""The browser the status page's test drives: Debian's `chromium`, installed by `make test` when missing.

Playwright for Python drives the system browser (`executable_path`), so no browser download happens
at test time. `ensure_chromium` installs the Debian package when it can (root with apt-get); otherwise
it says how, and the browser test fails with the same words (it is never skipped).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)

CANDIDATES = ("chromium", "chromium-browser")
DEFAULT_PATH = "/usr/bin/chromium"
INSTALL_HINT = ("the status page's browser test needs Debian's chromium: run `sudo apt-get install -y chromium` "
                "(or put a Chromium binary on PATH as `chromium`)")


def find_chromium() -> str | None:
    """The Chromium executable on PATH (or at /usr/bin/chromium); None if there is none."""
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return DEFAULT_PATH if Path(DEFAULT_PATH).exists() else None


def ensure_chromium() -> str | None:
    """Chromium's path, installing the `chromium` package first if it is missing and this runs as root with
    apt-get. Returns None (after printing how to install it) when it is missing and cannot be installed."""
    found = find_chromium()
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        print(f"warning: {INSTALL_HINT}")
        return None
    print("installing chromium for the status page's browser test (apt-get install -y chromium) ...")
    done = _apt(apt, "install", "-y", "-qq", "chromium")
    if done.returncode != 0:  # the package lists may be stale on a fresh machine: update once, then retry
        _apt(apt, "update", "-qq")
        done = _apt(apt, "install", "-y", "-qq", "chromium")
    if done.returncode != 0:
        print(f"warning: installing chromium failed ({done.stderr.strip()[-300:]}); {INSTALL_HINT}")
        return None
    return find_chromium()


def _apt(apt: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([apt, *args], check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
