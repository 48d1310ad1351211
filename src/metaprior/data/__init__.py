"""Data sets: BSDS500, Set3C, fastMRI knee slices, the embedded demo set, patch sampling."""

from metaprior.data.datasets import (
    DataRootError,
    bsds500,
    demo_images,
    fastmri_knee,
    fastmri_split,
    list_images,
    load_image,
    read_images,
    resolve_data_root,
    set3c,
)
from metaprior.data.patches import PatchSampler

__all__ = [
    "DataRootError",
    "PatchSampler",
    "bsds500",
    "demo_images",
    "fastmri_knee",
    "fastmri_split",
    "list_images",
    "load_image",
    "read_images",
    "resolve_data_root",
    "set3c",
]
