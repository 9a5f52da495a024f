"""The CUDA check (issue 14): DNN and DCNv2 for 2 epochs on frappe-x1 and ml1m-ctr on the GPU and
on the CPU of the same machine, plain and UTTSI@2.0 inference of the ml1m-ctr DCNv2 on both, and
one HeteGenCTR pre-training epoch on the GPU; prints samples/s, latency and test AUC side by side
and appends records (machine naming the GPU) to OUT/device.jsonl (training and inference) and
OUT/device-pretrain.json. Run through benchmarks/device_check.sh, which prepares the machine.
`--gpu cpu --epochs 1` runs every step here on the CPU: a rehearsal before device time is spent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from genctr.config import DataConfig, RunConfig
from genctr.data.store import prepare
from genctr.files import append_jsonl
from genctr.pretrain.loop import PretrainConfig, pretrain_run
from genctr.provenance import git_commit, machine, now_iso
from genctr.runs import train_run

MODELS = {"dnn": {"name": "dnn", "embedding_dim": 16, "numeric_embedding": "scaled",
                  "hidden_units": [400, 400, 400], "dropout": 0.2, "batch_norm": True},
          "dcnv2": {"name": "dcnv2", "embedding_dim": 16, "numeric_embedding": "scaled",
                    "structure": "parallel", "cross_layers": 3, "hidden_units": [400, 400, 400],
                    "dropout": 0.2, "batch_norm": True}}
TASKS = {"frappe-x1": "frappe", "ml1m-ctr": "movielens-1m"}  # source -> its folder under data/


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder of device.jsonl")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--gpu", default="cuda", help="the accelerator (cpu: a rehearsal of the steps)")
    args = parser.parse_args()
    gpu = args.gpu
    if gpu.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: nothing to check here", file=sys.stderr)
        return 2
    # the device machine gets a copy of the tree without .git: the caller passes the commit
    commit, results = os.environ.get("GENCTR_COMMIT") or git_commit(), args.out / "device.jsonl"
    work = Path(tempfile.mkdtemp(prefix="genctr-device-"))
    for task, folder in TASKS.items():
        if not (args.data_dir / folder).exists():
            print(f"{task}: no data at {args.data_dir / folder}; skipped")
            continue
        data = DataConfig(source=task, data_dir=str(args.data_dir.resolve()), cache_dir=str(work / "cache"))
        dataset = prepare(data.make_source(), data.cache_dir)
        for name, model in MODELS.items():
            for role, device in (("gpu", gpu), ("cpu", "cpu")):  # role: folder names apart in a rehearsal
                config = RunConfig(data=data, model=model, output_dir=str(work), train={
                    "epochs": args.epochs, "batch_size": 4096, "learning_rate": 0.001,
                    "embedding_l2": 0.01, "seed": 1, "progress": False, "device": device,
                    "bf16": role == "gpu" and device != "cpu", "split_on_device": role == "gpu"})
                started = time.perf_counter()
                _, _, metrics = train_run(config, work / f"{task}-{name}-{role}", dataset=dataset,
                                          log=lambda line: None)
                training = metrics["training"]
                record = {"task": task, "tool": "genctr", "model": name, "pretrain": "none",
                          "inference": "plain", "seed": 1, "device": device,
                          "test_auc": metrics["test"]["auc"], "test_logloss": metrics["test"]["logloss"],
                          "epochs": training["epochs"], "train_samples_per_s": training["train_samples_per_s"],
                          "epoch_seconds": training["epoch_seconds"], "peak_rss_mb": training["peak_rss_mb"],
                          "wall_seconds": time.perf_counter() - started, "commit": commit,
                          "machine": machine(device), "finished_at": now_iso()}
                append_jsonl(results, record)
                print(f"{task} {name} {device}: {record['train_samples_per_s']:,.0f} samples/s, "
                      f"test AUC {record['test_auc']:.4f} ({args.epochs} epochs)", flush=True)
        if task == "ml1m-ctr":
            inference_records(work / f"{task}-dcnv2-gpu", dataset, gpu, commit, results)
    if (args.data_dir / TASKS["ml1m-ctr"]).exists():
        data = DataConfig(source="ml1m-ctr", data_dir=str(args.data_dir.resolve()), cache_dir=str(work / "cache"))
        config = PretrainConfig(data=data, output_dir=str(work), pretrain={
            "epochs": 1, "batch_size": 2048, "device": gpu, "bf16": gpu != "cpu", "seed": 1,
            "denoiser": {"d_model": 32, "layers": 2, "heads": 4, "guidance": "query"},
            "balancer": {"name": "self_balancing"}})
        _, _, history = pretrain_run(config, work / "pretrain", log=lambda line: None)
        print(f"ml1m-ctr HeteGenCTR pre-training on {gpu}: {history[-1]['samples_per_s']:,.0f} "
              f"samples/s ({history[-1]['epoch_seconds']:.1f} s per epoch)")
        (args.out / "device-pretrain.json").write_text(json.dumps({
            "task": "ml1m-ctr", "model": "hetegen (pre-training, self_balancing)", "device": gpu,
            "samples_per_s": history[-1]["samples_per_s"], "epoch_seconds": history[-1]["epoch_seconds"],
            "commit": commit, "machine": machine(gpu), "finished_at": now_iso()}, indent=1))
    return 0


def inference_records(folder: Path, dataset, gpu: str, commit: str, results: Path) -> None:
    """Plain and UTTSI@2.0 over the GPU-trained run, loaded on the GPU and on the CPU: test AUC,
    average cost and latency (one row per request, and 4096-row batches)."""
    from genctr.runs import evaluate_run_inference, load_run
    from genctr.testtime.inference import InferenceOptions

    for device in (gpu, "cpu"):
        run = load_run(folder, device=device)
        for label, options in (("plain", InferenceOptions()),
                               ("uttsi@2.0", InferenceOptions(strategy="uttsi", budget=2.0))):
            result = evaluate_run_inference(run, dataset, options, splits=("valid", "test"))
            latency = result["latency"]
            record = {"task": "ml1m-ctr", "tool": "genctr", "model": "dcnv2", "pretrain": "none",
                      "inference": label, "seed": 1, "device": device, "trained_on": gpu,
                      "test_auc": result["test"]["auc"], "test_logloss": result["test"]["logloss"],
                      "avg_cost": result["test"]["avg_cost"],
                      **{f"latency_{k}": v for k, v in latency.items()},
                      "commit": commit, "machine": machine(device), "finished_at": now_iso()}
            append_jsonl(results, record)
            print(f"ml1m-ctr dcnv2 {label} on {device}: test AUC {record['test_auc']:.4f}, cost "
                  f"{record['avg_cost']:.2f}, 1-row p50/p99 {latency['single_p50_ms']:.2f}/"
                  f"{latency['single_p99_ms']:.2f} ms, 4096-row p50 {latency['batch4096_p50_ms']:.1f} ms", flush=True)


if __name__ == "__main__":
    sys.exit(main())
