"""The package's version and the name it is installed under (core: imported by checkpoints and bundles, which
record it, without the package facade)."""

__version__ = "0.1.0"
# The name to `pip install` (the import name stays `mobileclip`; `mobileclip` on PyPI is another project).
DISTRIBUTION = "mobileclip-toolkit"
