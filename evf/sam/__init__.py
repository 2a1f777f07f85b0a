"""SAM-backend plugins. Importing this package registers the built-in ones."""
from evf.sam.base import SAM_BACKENDS, SamBackend
from evf.sam.sam1 import Sam1Backend

__all__ = ["SAM_BACKENDS", "SamBackend", "Sam1Backend"]
