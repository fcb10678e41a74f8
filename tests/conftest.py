"""Test-wide settings."""

from __future__ import annotations

import os

# The tiny models gain nothing from a second thread, and on a small shared CPU (CI has 2 cores) torch's
# thread pool slows them several times over when other work runs. Subprocesses inherit this too.
os.environ.setdefault("OMP_NUM_THREADS", "1")
