"""Multimodal-encoder plugins. Importing this package registers the built-in ones.

A plugin is one file whose class carries ``@ENCODERS.register(name, tiny={...})``, plus its one import line
below (the redundant ``as`` marks a public re-export). Heavy optional packages (open_clip, transformers' ViLT)
are imported only when a plugin is built.
"""
from evf.encoders.base import ENCODERS as ENCODERS
from evf.encoders.base import MultimodalEncoder as MultimodalEncoder
from evf.encoders.beit3 import Beit3Encoder as Beit3Encoder
from evf.encoders.clip import ClipEncoder as ClipEncoder
from evf.encoders.vilt import ViltEncoder as ViltEncoder
