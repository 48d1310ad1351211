"""Reconstruction networks."""

from metaprior.models.pdnet import PDLayer, PDNet, PDNetConfig, conv_norm_sq

__all__ = ["PDLayer", "PDNet", "PDNetConfig", "conv_norm_sq"]
