"""Data: sources → an in-memory ImageSet; label-budget splits."""

from .imageset import ImageSet
from .sources import SOURCES, Dataset, load_dataset
from .split import Split, make_split

__all__ = ["SOURCES", "Dataset", "ImageSet", "Split", "load_dataset", "make_split"]
