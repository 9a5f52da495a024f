"""genctr vs FuxiCTR 2.3.10: same rows, model and hyper-parameters, in one run on one machine.

    .venv/bin/python benchmarks/peer.py --experiment configs/bench-frappe.yaml \
        [--models dnn deepfm dcnv2] [--seeds 1 2 3]

For each (model, seed), back to back: genctr (`genctr train` on the experiment's cell config,
from the raw files with a cold cache, so its total includes encoding), then FuxiCTR (its
FeatureProcessor + build_dataset on the same columns exported as CSV by benchmarks/encode.py,
then its model_zoo model with the translated hyper-parameters). Both records are appended to the
experiment's results file; the genctr record carries the throughput and total-time ratios of the
pair, and counts as that experiment's cell, so `genctr run` does not train it again. Cells
already recorded are skipped. Needs FuxiCTR's venv (created by benchmarks/encode.py) and a
source checkout of reczoo/FuxiCTR for model_zoo (--fuxictr-src).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / ".work"
sys.path.insert(0, str(ROOT / "benchmarks"))


def fuxictr_params(model: dict, train) -> dict:
    """Our model/train config in FuxiCTR's parameter names."""
    params = {"learning_rate": train.learning_rate, "embedding_regularizer": train.embedding_l2,
              "net_regularizer": train.net_l2, "batch_size": train.batch_size,
              "embedding_dim": model.get("embedding_dim", 10), "epochs": train.epochs,
              "early_stop_patience": train.patience, "max_gradient_norm": train.grad_clip,
              "net_dropout": model.get("dropout", 0.0), "batch_norm": model.get("batch_norm", False)}
    if model["name"] in ("dnn", "deepfm"):
        params |= {"hidden_units": model["hidden_units"], "hidden_activations": "relu"}
    elif model["name"] == "dcnv2":
        units = "parallel_dnn_hidden_units" if model["structure"] == "parallel" else "stacked_dnn_hidden_units"
        params |= {"model_structure": model["structure"], "use_low_rank_mixture": False,
                   "num_cross_layers": model["cross_layers"], units: model["hidden_units"],
                   "dnn_activations": "relu"}
    else:
        raise SystemExit(f"no FuxiCTR translation for model {model['name']}")
    return params


def recorded(results: Path) -> set[tuple]:
    if not results.is_file():
        return set()
    return {(r["experiment"], r["model"], r["seed"]) for r in
            map(json.loads, filter(str.strip, results.read_text().splitlines()))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", type=Path, required=True)
    parser.add_argument("--models", nargs="+", default=["dnn", "deepfm", "dcnv2"])
    parser.add_argument("--seeds", nargs="+", type=int)
    parser.add_argument("--fuxictr-venv", type=Path, default=WORK / "fuxictr-venv")
    parser.add_argument("--fuxictr-src", type=Path, default=WORK / "FuxiCTR")
    args = parser.parse_args()

    from encode import export_csv, fuxictr_python

    from genctr.experiment import load_experiment, record_for
    from genctr.provenance import git_commit, machine, now_iso
    from genctr.files import append_jsonl

    experiment = load_experiment(args.experiment)
    (task, data), = experiment.tasks.items()
    results = Path(experiment.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    done = recorded(results)
    python = fuxictr_python(args.fuxictr_venv)
    csv_dir = export_csv(task, Path(data.data_dir))
    command = f"benchmarks/peer.py --experiment {args.experiment}"
    commit = git_commit()  # of the code that runs, even if files are edited meanwhile
    for seed in args.seeds or experiment.seeds:
        for label in args.models:
            ours_done = (experiment.name, label, seed) in done
            if ours_done and (experiment.name, f"fuxictr:{label}", seed) in done:
                print(f"skip {label} seed {seed}: recorded", flush=True)
                continue
            if ours_done:  # a pair must run back to back: never add a second genctr record
                raise SystemExit(f"{results}: {label} seed {seed} has a genctr record without its "
                                 "FuxiCTR pair; remove that record to run the pair")
            config = experiment.run_config(task, label, seed)
            run_dir = experiment.run_folder(task, label, seed)
            with tempfile.TemporaryDirectory(dir=WORK) as cold_cache:
                cell = config.model_copy(update={"data": data.model_copy(update={"cache_dir": cold_cache})})
                run_dir.parent.mkdir(parents=True, exist_ok=True)
                cell_file = run_dir.parent / f"{run_dir.name}-peer-cell.yaml"  # beside the run
                cell_file.write_text(yaml.safe_dump(cell.model_dump(mode="json")))
                started = time.perf_counter()
                # --overwrite: a run left by an earlier, unrecorded attempt of this pair is replaced
                subprocess.run([sys.executable, "-m", "genctr", "train", str(cell_file),
                                "--output", str(run_dir), "--overwrite"], check=True, stdout=subprocess.DEVNULL)
                genctr_total = time.perf_counter() - started
            metrics = json.loads((run_dir / "metrics.json").read_text())
            ours = record_for(task, label, seed, config, metrics, experiment.name, run_dir, commit)

            started = time.perf_counter()
            peer_run = subprocess.run(
                [str(python), str(ROOT / "benchmarks" / "fuxictr_train.py"), "--csv-dir", str(csv_dir),
                 "--spec", str(csv_dir / "fuxictr_spec.yaml"), "--work-dir", str(WORK / "fuxictr-train" / task),
                 "--fuxictr-src", str(args.fuxictr_src), "--model", config.model_name,
                 "--seed", str(seed), "--params", json.dumps(fuxictr_params(config.model, config.train))],
                check=True, capture_output=True, text=True)
            fuxictr_total = time.perf_counter() - started
            # FuxiCTR and Ray may print after our JSON line: take the last line that is one
            peer = json.loads([line for line in peer_run.stdout.splitlines() if line.startswith("{")][-1])
            theirs = {"task": task, "model": f"fuxictr:{label}", "pretrain": "none", "inference": "plain",
                      "seed": seed, **{k: peer[k] for k in ("test_auc", "test_logloss", "valid_auc", "epochs",
                                                          "best_epoch", "epoch_seconds",
                                                          "train_samples_per_s", "peak_rss_mb")},
                      "total_seconds": fuxictr_total, "experiment": experiment.name,
                      "config": {"fuxictr_params": fuxictr_params(config.model, config.train)},
                      "command": command, "commit": commit, "machine": machine(),
                      "finished_at": now_iso()}
            ours |= {"total_seconds": genctr_total, "command": command,
                     "throughput_vs_fuxictr": ours["train_samples_per_s"] / peer["train_samples_per_s"],
                     "total_speedup_vs_fuxictr": fuxictr_total / genctr_total}
            append_jsonl(results, ours)
            append_jsonl(results, theirs)
            print(f"{label} seed {seed}: genctr auc {ours['test_auc']:.5f} {ours['train_samples_per_s']:,.0f}/s "
                  f"total {genctr_total:.0f}s | fuxictr auc {peer['test_auc']:.5f} "
                  f"{peer['train_samples_per_s']:,.0f}/s total {fuxictr_total:.0f}s | throughput x"
                  f"{ours['throughput_vs_fuxictr']:.2f}, total x{ours['total_speedup_vs_fuxictr']:.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
