"""The paper's experiments, reproduced on the public API and kept apart from the library.

* :mod:`~metaprior.experiments.table1`: Table 1 (SR ×2 and MRI ×4 with every method side by
  side, ``metaprior evaluate --suite table1``), the from-scratch PDNet column (``--suite
  scratch``) and Fig. 3 across depths (``--suite depth``);
* :mod:`~metaprior.experiments.report`: the figures and markdown tables rebuilt from their
  JSON (``metaprior report``);
* :mod:`~metaprior.experiments.linear`: the linear Gaussian toy of Sec. 3 (Fig. 2,
  ``metaprior linear``).

The library (:mod:`metaprior` and its other subpackages) never imports from here: these
modules only use what it exports, adaptation (:func:`metaprior.adapt.fine_tune`), scoring
(:mod:`metaprior.evaluate`), models and checkpoints, the way a user's own study would.
"""
