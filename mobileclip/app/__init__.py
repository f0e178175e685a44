"""The application layer: the `mobileclip` command line and the embedded demo.

Imports go one way: ``mobileclip.app`` -> ``mobileclip.export`` / ``mobileclip.distill`` /
``mobileclip.benchmarks`` -> the core (``mobileclip`` with ``backends`` and ``runtime``). Nothing
outside this package (and ``mobileclip/__main__.py``) imports it. ``cli.py`` builds the parser and
is the one error boundary; each command group is one module with ``register(sub)``.
"""
