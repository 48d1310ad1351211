"""The product commands of ``metaprior`` (:mod:`metaprior.cli` builds their parser): each
module holds one command's options (frozen dataclasses, one flag per field) and its
``cmd_*`` function."""
