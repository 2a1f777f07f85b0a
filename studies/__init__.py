"""Studies built on the ``evf`` library: not installed, run from the repository root (``python -m studies.<study>...``)."""
