"""Multimodal-encoder plugins. Importing this package registers the built-in ones.

Heavy optional packages (open_clip, transformers' ViLT) are imported only when a plugin is built.
"""
from evf.encoders.base import ENCODERS, MultimodalEncoder
from evf.encoders.beit3 import Beit3Encoder
from evf.encoders.clip import ClipEncoder
from evf.encoders.vilt import ViltEncoder

__all__ = ["ENCODERS", "Beit3Encoder", "ClipEncoder", "MultimodalEncoder", "ViltEncoder"]
