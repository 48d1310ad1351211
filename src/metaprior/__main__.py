"""``python -m metaprior``: the command line (:mod:`metaprior.cli`)."""

from metaprior.cli import main

main()
