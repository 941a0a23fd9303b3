"""Training data: ``dataset_info.json`` -> records -> encoded samples -> padded batches.

    info = load_dataset_info("data/dataset_info.json")
    dataset = build_dataset(info, ["captions", "conversations"], processor)
    loader = DataLoader(dataset, batch_size=8, collate_fn=DataCollator(processor))

Malformed records and unusable images are skipped, counted and named (``SkipLog``), never trained
on as empty samples; a meta file that cannot be read at all, or a named dataset none of whose
records is usable, fails at once (``DataError``). ``read_datasets`` does all of this checking
without a processor, so a run can do it before its model loads.
"""

from ovis.data.dataset import DataCollator, SupervisedDataset, build_dataset
from ovis.data.readers import Record, read_records
from ovis.data.schema import DataError, DatasetEntry, DatasetInfo, UnknownDatasetError, load_dataset_info
from ovis.data.skips import SkipLog, Skipped
from ovis.data.validate import read_datasets

__all__ = [
    "DataCollator",
    "DataError",
    "DatasetEntry",
    "DatasetInfo",
    "Record",
    "SkipLog",
    "Skipped",
    "SupervisedDataset",
    "UnknownDatasetError",
    "build_dataset",
    "load_dataset_info",
    "read_datasets",
    "read_records",
]
