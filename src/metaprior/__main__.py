"""``python -m metaprior``: the command line (:mod:`metaprior.cli`)."""

if __name__ == "__main__":
    from metaprior.cli import main

    main()
