"""SAM-backend plugins. Importing this package registers the built-in ones (sam2 itself is imported lazily)."""
from evf.sam.base import SAM_BACKENDS, SamBackend
from evf.sam.efficientsam import EfficientSamBackend
from evf.sam.sam1 import Sam1Backend
from evf.sam.sam2 import Sam2Backend

__all__ = ["SAM_BACKENDS", "EfficientSamBackend", "Sam1Backend", "Sam2Backend", "SamBackend"]
