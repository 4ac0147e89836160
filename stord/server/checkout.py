"""Running from a source checkout without `pip install -e .`: make `stord_client` importable.

The SDK lives in clients/ next to the stord package; an installed stord finds it through
the package metadata, a plain checkout (PYTHONPATH=.) does not.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def ensure_client_importable() -> None:
    if importlib.util.find_spec("stord_client") is not None:
        return
    clients = Path(__file__).resolve().parents[2] / "clients"
    if (clients / "stord_client").is_dir():
        sys.path.append(str(clients))
