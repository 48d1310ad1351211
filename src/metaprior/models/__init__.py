"""Reconstruction networks, by name in :mod:`metaprior.models.registry`."""

from metaprior.models.ffdnet import FFDNet
from metaprior.models.hqs import HQSNet, HQSNetConfig, smooth_estimate
from metaprior.models.pdnet import PDLayer, PDNet, PDNetConfig, conv_norm_sq
from metaprior.models.registry import (
    ARCHITECTURES,
    Architecture,
    architecture_of,
    available_architectures,
    build_model,
    config_from_dict,
    get_architecture,
    register_architecture,
)

__all__ = ["ARCHITECTURES", "Architecture", "FFDNet", "HQSNet", "HQSNetConfig", "PDLayer",
           "PDNet", "PDNetConfig", "architecture_of", "available_architectures", "build_model",
           "config_from_dict", "conv_norm_sq", "get_architecture", "register_architecture",
           "smooth_estimate"]
