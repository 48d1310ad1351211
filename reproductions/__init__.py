"""The paper's reproductions (Terris & Moreau, Meta-Prior), beside the library and built on its
public API only, the way a user's own study would be.

* :mod:`reproductions.table1`: Table 1 (SR ×2 and MRI ×4 with every method side by side,
  ``python -m reproductions table1``), the from-scratch PDNet column (``scratch``) and Fig. 3
  across depths (``depth``);
* :mod:`reproductions.report`: the figures and markdown tables rebuilt from their JSON
  (``python -m reproductions report``);
* :mod:`reproductions.linear`: the linear Gaussian theory of Sec. 3 and its toy experiment
  (Fig. 2, ``python -m reproductions linear``);
* :mod:`reproductions.meta_prior_study`: the meta-training recipe study;
* :mod:`reproductions.check_results`: the committed results are complete
  (``python -m reproductions check``).

Configurations are in ``reproductions/configs/``, results in ``reproductions/results/``,
figures in ``reproductions/figures/``, the paper's PDNets in ``reproductions/models/``
(importing this package makes their names loadable: :func:`metaprior.pretrained.add_model_dir`);
``reproductions/README.md`` is the index. The library never imports this package.
"""

from pathlib import Path

from metaprior.pretrained import add_model_dir

#: The paper's PDNets (``reproductions/models/MODELS.json``), loadable by name once this
#: package is imported.
MODELS = add_model_dir(Path(__file__).parent / "models")
