"""Check the committed result files: every Table 1 JSON (``table1.json`` and the single-model
``table1_*.json``) and the Fig. 3 depth sweep are complete, with finite numbers, and the
depth sweep is the one the docs describe (depths 20/40/60, each with its own inner loss).

These are checks of data, not of code, so they run in CI (``.ci/run``) rather than in the
test suite::

    python -m reproductions check [--results reproductions/results]
"""

from __future__ import annotations

import json
from pathlib import Path

from reproductions.table1 import check_depth_results, check_results

RESULTS = Path(__file__).resolve().parent / "results"


def check(folder: Path) -> list[str]:
    """One line per problem found (empty: all good)."""
    problems = []
    main = folder / "table1.json"
    # *_grid.json files are caches of grid-search and lr choices, not results
    tables = sorted(p for p in folder.glob("table1*.json") if not p.stem.endswith("_grid"))
    if main not in tables:
        problems.append(f"{main} is missing: run python -m reproductions table1")
    for path in tables:
        try:
            results = json.loads(path.read_text())
            steps, curve = results["config"]["steps"], results["config"]["curve"]
            if not results["config"]["inits"] or not (steps == 50 or (steps > 50 and 50 in curve)):
                raise ValueError("not the 50-step protocol (or a longer run scored after 50 "
                                 "steps too) with at least one initialisation")
            if path == main and set(results["tasks"]) != {"sr2", "mri4"}:
                raise ValueError("the full table must hold sr2 and mri4")
            check_results(results)
        except (ValueError, KeyError, TypeError) as e:
            problems.append(f"{path.name}: {type(e).__name__}: {e}")
    depth = folder / "training_tasks_depth.json"
    try:
        results = json.loads(depth.read_text())
        check_depth_results(results, n_images=3)
        for name, entries in results["depth_sweep"].items():
            loss = "supervised" if name == "meta_sup" else "unsupervised"
            if [e["depth"] for e in entries] != [20, 40, 60] or any(
                    e["inner"]["loss"] != loss for e in entries):
                raise ValueError(f"{name}: not depths 20/40/60 with the {loss} inner loss")
    except (OSError, ValueError, KeyError, TypeError) as e:
        problems.append(f"{depth.name}: {type(e).__name__}: {e}")
    return problems
