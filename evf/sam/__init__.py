"""SAM-backend plugins. Importing this package registers the built-in ones (sam2 itself is imported lazily).

A plugin is one file whose class carries ``@SAM_BACKENDS.register(name, tiny={...})`` and owns its image view,
plus its one import line below (the redundant ``as`` marks a public re-export).
"""
from evf.sam.base import SAM_BACKENDS as SAM_BACKENDS
from evf.sam.base import SamBackend as SamBackend
from evf.sam.efficientsam import EfficientSamBackend as EfficientSamBackend
from evf.sam.sam1 import Sam1Backend as Sam1Backend
from evf.sam.sam2 import Sam2Backend as Sam2Backend
