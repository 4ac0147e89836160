"""stord benchmarks: `python -m bench.run` (see bench/RESULTS.md)."""

try:  # a plain checkout: make clients/stord_client importable as the daemon does
    from stord.server.checkout import ensure_client_importable

    ensure_client_importable()
except ImportError:
    pass
