"""The artifact store: exported and converted ONNX files, one directory per model and size, one manifest each.

Layout: ``<root>/<model>/<size>/{fp32,fp16,int8}.onnx`` plus ``manifest.json`` and calibration caches.
The root is this directory unless ``AIMATRIX_STORE`` names another. Binaries are git-ignored.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_ROOT = Path(__file__).resolve().parent


def store_root() -> Path:
    """The store's root directory: ``$AIMATRIX_STORE`` if set, else the ``onnx_models`` package directory."""
    return Path(os.environ.get("AIMATRIX_STORE", DEFAULT_ROOT))
