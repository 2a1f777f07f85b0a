"""Multimodal-encoder plugins. Importing this package registers the built-in ones."""
from evf.encoders.base import ENCODERS, MultimodalEncoder
from evf.encoders.beit3 import Beit3Encoder

__all__ = ["ENCODERS", "MultimodalEncoder", "Beit3Encoder"]
