"""Merge Table 1 result files that scored different rows under the same protocol into one
table (e.g. two initialisations run side by side in two processes, and the baselines and
from-scratch networks of an earlier run, which do not depend on the initialisations).

Usage::

    python -m reproductions.merge_table1 --base reproductions/results/table1.json \
        --runs runs/table1/p1.json runs/table1/p2.json --out reproductions/results/table1.json

``--baselines FILE ...`` adds the classical baselines' rows that the base lacks from other
files (e.g. TV, TGV and wavelets of an earlier run beside runs that scored one model).

Rows of later files replace those of earlier ones; the merged file lists where each row came
from under ``"merged_from"``, its ``table`` is rebuilt from the merged rows, and its config's
``tasks`` and ``inits`` are those of all the files (so ``check_results`` checks every row).
The first test images of the runs (``<stem>_visuals.safetensors``, for ``python -m
reproductions report``'s visual figures) are merged the same way, over the base's where it has one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from metaprior.checkpoint import load_tensors, save_tensors
from reproductions.table1 import INITS, table_rows, write_json


def _visuals(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.stem + "_visuals.safetensors")


def merge(base: dict, runs: list[tuple[str, dict]], base_name: str,
          baselines: list[tuple[str, dict]] = ()) -> dict:
    out = json.loads(json.dumps(base))
    sources: dict = {"base": base_name, "rows": {}}
    for name, run in baselines:  # classical baselines the base lacks, from other files
        for task, rec in run["tasks"].items():
            have = out["tasks"].get(task, {}).get("baselines", {})
            for row in set(rec["baselines"]) - set(have) if task in out["tasks"] else ():
                have[row] = rec["baselines"][row]
                sources["rows"][f"{task}/{row}"] = name
    for name, run in runs:
        for key in ("meta_sup", "meta_unsup", "joint"):
            if key in run.get("models", {}):
                out["models"][key] = run["models"][key]
        for key, value in run.get("training_tasks", {}).items():
            out.setdefault("training_tasks", {})[key] = value
        for task, rec in run["tasks"].items():
            target = out["tasks"].setdefault(task, rec)
            target["pdnet"].update(rec["pdnet"])
            target["baselines"].update(rec["baselines"])
            for row in [*rec["pdnet"], *rec["baselines"]]:
                sources["rows"][f"{task}/{row}"] = name
        out["config"].setdefault("merged_configs", {})[name] = run["config"]
        for key, order in (("tasks", list(out["tasks"])), ("inits", list(INITS))):
            have = set(out["config"].get(key, ())) | set(run["config"].get(key, ()))
            out["config"][key] = [k for k in order if k in have]
    out["table"] = table_rows(out)
    out["merged_from"] = sources
    out["wall_seconds_per_file"] = {base_name: base.get("wall_seconds"),
                                    **{n: r.get("wall_seconds") for n, r in runs}}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="the earlier full table (its rows are kept "
                   "unless a run replaces them)")
    p.add_argument("--runs", nargs="+", required=True, help="table JSONs whose rows win")
    p.add_argument("--baselines", nargs="*", default=[], help="table JSONs whose classical "
                   "baselines' rows are added where the base lacks them")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    base = json.loads(Path(args.base).read_text())
    runs = [(r, json.loads(Path(r).read_text())) for r in args.runs]
    extra = [(r, json.loads(Path(r).read_text())) for r in args.baselines]
    print(f"wrote {write_json(args.out, merge(base, runs, args.base, extra))}")
    tensors = {}
    for source in (args.base, *args.runs):
        if _visuals(source).is_file():
            tensors.update(load_tensors(_visuals(source)))
    if tensors:
        save_tensors(_visuals(args.out), tensors,
                      {"about": "first test image of each task, every method, float16"})
        print(f"wrote {_visuals(args.out)}")


if __name__ == "__main__":
    main()
