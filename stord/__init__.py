"""stord: storage-side compute with eBPF filter/reduce programs."""

__version__ = "0.1.0"
