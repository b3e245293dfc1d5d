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
from conftest import tiny_config_in  # noqa: E402  (the tests' tiny configuration, so both check one thing)

from vlpbench.config import config_from_dict  # noqa: E402
from vlpbench.experiment import run_experiment  # noqa: E402
from vlpbench.rundir import RunDir  # noqa: E402

ALBEF = {"name": "albef", "embed_dim": 32, "queue_size": 16}
LIGHTVLP = {"name": "lightvlp", "embed_dim": 32, "queue_size": 16, "cross_layers": 2, "decoder_layers": 1,
            "decoder_width": 32, "decoder_heads": 2}
VLMAE = {"name": "vlmae", "embed_dim": 32, "queue_size": 16, "decoder_layers": 1, "decoder_width": 32,
         "decoder_heads": 2}
CONFIGURATIONS = {
    "albef": ALBEF,
    "albef_row1": {**ALBEF, "itc": False, "itm_hard_negatives": False, "distill_itc": False, "distill_mlm": False},
    "albef_row3": {**ALBEF, "distill_itc": False, "distill_mlm": False},
    "vlmae": VLMAE,
    "vlmae_distill_mlm": {**VLMAE, "distill_mlm": True, "alpha_warmup_steps": 2},
    "lightvlp": LIGHTVLP,
    "lightvlp_no_itc": {**LIGHTVLP, "itc": False},
    "vilta": {"name": "vilta", "fusion_layers": 2, "cross_distill": False, "negatives": "in_batch"},
    "epic_albef": {"name": "epic", "base": ALBEF, "masking": "random", "replacement": "random"},
    "epic_lightvlp": {"name": "epic", "base": LIGHTVLP, "masking": "random", "replacement": "random"},
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
