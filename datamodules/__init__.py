"""LightningDataModules (the third plugin slot). Importing this package registers the built-in ones."""
from datamodules.base import DATAMODULES, ProcessedDataset, RefSegDataModule
from datamodules.synthetic import SyntheticRefDataModule, SyntheticRefDataset

__all__ = ["DATAMODULES", "ProcessedDataset", "RefSegDataModule", "SyntheticRefDataModule", "SyntheticRefDataset"]
