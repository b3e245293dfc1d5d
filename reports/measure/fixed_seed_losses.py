"""Every method's per-step training losses at a fixed seed, on the tests' tiny configuration, written
as exact floats: the before/after check of a refactor that must not change a single number.

    python reports/measure/fixed_seed_losses.py before.json      # at the old commit
    python reports/measure/fixed_seed_losses.py after.json       # at the new one
    cmp before.json after.json                                   # identical files: bit-identical losses"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from conftest import REGISTERED_METHODS, tiny_config_in, tiny_method  # noqa: E402  (the tests' tiny configuration)

from vlpbench.config import config_from_dict  # noqa: E402
from vlpbench.experiment import run_experiment  # noqa: E402
from vlpbench.rundir import RunDir  # noqa: E402

# every registered method at its tiny keys, and the ablation variants that take other code paths
CONFIGURATIONS = {name: tiny_method(name) for name in REGISTERED_METHODS} | {
    "albef_row1": {**tiny_method("albef"), "itc": False, "itm_hard_negatives": False, "distill_itc": False,
                   "distill_mlm": False},
    "albef_row3": {**tiny_method("albef"), "distill_itc": False, "distill_mlm": False},
    "vlmae_distill_mlm": {**tiny_method("vlmae"), "distill_mlm": True, "alpha_warmup_steps": 2},
    "lightvlp_no_itc": {**tiny_method("lightvlp"), "itc": False},
    "epic_lightvlp": {**tiny_method("epic"), "base": tiny_method("lightvlp")},
}


def losses_of(method: dict, root: Path, steps: int) -> dict:
    cfg = tiny_config_in(root)
    cfg["method"], cfg["train"]["steps"] = method, steps
    cfg["eval"] = {"retrieval": {"k_test": "all", "batch_size": 8}}
    config = config_from_dict(cfg)
    result = run_experiment(config, RunDir.create(config), log=lambda *a: None)
    rows = [json.loads(line) for line in (Path(result["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    return {"train": [{k: v for k, v in r.items() if k.startswith("loss") or k in ("alpha", "temp")}
                      for r in rows if "loss" in r],
            "retrieval_itm": result["retrieval"]["itm"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        out = {name: losses_of(method, Path(scratch) / name, args.steps) for name, method in CONFIGURATIONS.items()}
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
