"""Find the system Chromium for Playwright, or skip with the reason.

Playwright's own browser download (`playwright install`) cannot run offline, so
the browser tests drive the distribution's Chromium instead. CI installs it with
`apt-get install -y chromium`. A missing browser skips the test; a browser that
is present but fails to start fails it (a broken install must not look green).
"""
from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM_PATH = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def chromium_executable() -> str:
    """Path of the system Chromium; ``pytest.skip`` (with how to fix) if there is none."""
    for candidate in (CHROMIUM_PATH, shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip(f"Chromium not found at {CHROMIUM_PATH} or on PATH; install it with "
                "`apt-get install -y chromium` (Playwright's downloaded browsers are not used)")


def launch_chromium(playwright):
    """Launch headless system Chromium through a ``sync_playwright()`` instance."""
    return playwright.chromium.launch(executable_path=chromium_executable(), headless=True,
                                      args=CHROMIUM_ARGS)
