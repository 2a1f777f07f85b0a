"""LightningDataModules (the third plugin slot). Importing this package registers the built-in ones."""
from datamodules.base import DATAMODULES, ProcessedDataset, RefSegDataModule
from datamodules.custom import CustomRefDataModule
from datamodules.humanparsing import HumanParsingDataModule
from datamodules.hybrid import HybridDataModule
from datamodules.objects365 import Objects365DataModule
from datamodules.parts import PartImageNetDataModule, PascalPartDataModule
from datamodules.reasonseg import ReasonSegDataModule
from datamodules.refcoco import GRefCocoDataModule, RefCocoDataModule
from datamodules.semantic import ADE20KDataModule, MapillaryVistasDataModule
from datamodules.spatial import SpatialRefDataModule, SpatialRefDataset
from datamodules.synthetic import SyntheticRefDataModule, SyntheticRefDataset

__all__ = [
           "DATAMODULES",
           "ADE20KDataModule",
           "CustomRefDataModule",
           "GRefCocoDataModule",
           "HumanParsingDataModule",
           "HybridDataModule",
           "MapillaryVistasDataModule",
           "Objects365DataModule",
           "PartImageNetDataModule",
           "PascalPartDataModule",
           "ProcessedDataset",
           "ReasonSegDataModule",
           "RefCocoDataModule",
           "RefSegDataModule",
           "SpatialRefDataModule",
           "SpatialRefDataset",
           "SyntheticRefDataModule",
           "SyntheticRefDataset",
]
