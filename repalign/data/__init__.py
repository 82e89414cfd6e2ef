"""Datasets: image-caption pairs, Hateful Memes, and the embedded synthetic default."""

from repalign.data.base import Sample, SampleDataset

__all__ = ["Sample", "SampleDataset"]
