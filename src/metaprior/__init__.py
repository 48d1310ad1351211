"""metaprior: meta-learned, adaptive unrolled solvers for imaging inverse problems."""

__version__ = "0.1.0"
