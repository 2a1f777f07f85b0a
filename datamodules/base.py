"""The datamodule plugin slot, defined by the library in ``evf.datamodule`` (re-exported here for the datasets)."""
from evf.datamodule import DATAMODULES, ProcessedDataset, RefSegDataModule, eval_sampler

__all__ = ["DATAMODULES", "ProcessedDataset", "RefSegDataModule", "eval_sampler"]
