"""LightningDataModules (the third plugin slot). Importing this package registers the built-in ones."""
from datamodules.base import DATAMODULES, ProcessedDataset, RefSegDataModule
from datamodules.synthetic import SyntheticRefDataModule, SyntheticRefDataset
from datamodules.spatial import SpatialRefDataModule, SpatialRefDataset
from datamodules.refcoco import GRefCocoDataModule, RefCocoDataModule
from datamodules.semantic import ADE20KDataModule, MapillaryVistasDataModule
from datamodules.humanparsing import HumanParsingDataModule
from datamodules.parts import PartImageNetDataModule, PascalPartDataModule
from datamodules.objects365 import Objects365DataModule
from datamodules.hybrid import HybridDataModule

__all__ = ["DATAMODULES", "ProcessedDataset", "RefSegDataModule", "SyntheticRefDataModule", "SyntheticRefDataset",
           "SpatialRefDataModule", "SpatialRefDataset",
           "RefCocoDataModule", "GRefCocoDataModule", "ADE20KDataModule", "MapillaryVistasDataModule",
           "HumanParsingDataModule", "PascalPartDataModule", "PartImageNetDataModule", "Objects365DataModule",
           "HybridDataModule"]
