"""The runtime: device resolution, batch moves, bf16 notes; CUDA runs where a GPU exists
(marked `cuda`: skipped, with the reason shown, on machines without one)."""

import numpy as np
import pytest
import torch

from genctr.config import DataConfig, RunConfig
from genctr.data.batches import batch_of
from genctr.errors import ConfigError
from genctr.runtime import Runtime, move_batch, resolve_device
from genctr.train import TrainConfig

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DATA = DataConfig(source="synthetic", cache_dir=None, options={"rows": 3000, "users": 200, "items": 150, "seed": 7})


def test_device_resolution_and_clear_errors():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="choose auto, cpu, cuda or cuda:N"):
        resolve_device("gpu")
    beyond = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ConfigError, match=f"this machine has {beyond} CUDA device"):
        resolve_device(f"cuda:{beyond}")
    with pytest.raises(ValueError, match="device"):
        TrainConfig(device="tpu")


def test_batches_stay_put_on_their_device_and_bf16_without_instructions_is_noted(small_synthetic, monkeypatch):
    import genctr.runtime as runtime

    batch = batch_of(small_synthetic.splits["test"], slice(0, 8))
    assert move_batch(batch, torch.device("cpu")) is batch
    notes = []
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    Runtime.create("cpu", bf16=True, log=notes.append)
    assert len(notes) == 1 and "emulated" in notes[0]
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    Runtime.create("cpu", bf16=True, log=notes.append)
    assert len(notes) == 1


@cuda
def test_training_pretraining_and_inference_on_cuda_match_cpu(small_synthetic, tmp_path):
    from genctr.pretrain.loop import PretrainConfig, pretrain_run
    from genctr.runs import evaluate_run_inference, load_run, train_run
    from genctr.testtime.inference import InferenceOptions
    from genctr.train import predict_split

    metrics = {}
    for device in ("cpu", "cuda"):
        config = RunConfig(data=DATA, model={"name": "dcnv2", "hidden_units": [32], "dropout": 0.1},
                           train={"epochs": 2, "batch_size": 256, "seed": 1, "progress": False,
                                  "device": device, "split_on_device": device == "cuda"})
        _, _, metrics[device] = train_run(config, tmp_path / device, dataset=small_synthetic,
                                          log=lambda line: None)
    assert abs(metrics["cpu"]["test"]["auc"] - metrics["cuda"]["test"]["auc"]) < 0.02
    on_gpu = load_run(tmp_path / "cuda", device="cuda")
    on_cpu = load_run(tmp_path / "cuda", device="cpu")
    test = small_synthetic.splits["test"]
    np.testing.assert_allclose(predict_split(on_gpu.model, test), predict_split(on_cpu.model, test), atol=1e-4)
    result = evaluate_run_inference(on_gpu, small_synthetic, InferenceOptions(strategy="uttsi", budget=2.0),
                                    measure_latency=False)
    assert 1 <= result["test"]["avg_cost"] <= 8
    pretrain = PretrainConfig(data=DATA, pretrain={"epochs": 1, "batch_size": 256, "device": "cuda",
                                                   "heads": {"sampled_above": 100}})
    _, net, history = pretrain_run(pretrain, tmp_path / "pre", dataset=small_synthetic, log=lambda line: None)
    assert np.isfinite(list(history[-1]["field_loss"].values())).all()
    # fine-tuning the pre-trained network (sequence fields, masks drawn on the host) on the GPU
    fine = RunConfig(data=DATA, model={"name": "hetegen"}, init_from=str(tmp_path / "pre"),
                     train={"epochs": 1, "batch_size": 256, "seed": 1, "progress": False, "device": "cuda",
                            "split_on_device": True})
    tuned, _, tuned_metrics = train_run(fine, tmp_path / "fine", dataset=small_synthetic, log=lambda line: None)
    assert next(tuned.model.parameters()).is_cuda and tuned_metrics["test"]["auc"] > 0.55


def test_a_resident_train_split_gives_the_same_batches_and_weights(small_synthetic, tmp_path, monkeypatch):
    from genctr.data.batches import iterate_batches, whole_split
    from genctr.runs import train_run

    train = small_synthetic.splits["train"]
    resident = Runtime.create("cpu").resident(train, "train split", log=print)
    for a, b in zip(iterate_batches(train, 512, shuffle=True, seed=3),
                    iterate_batches(resident, 512, shuffle=True, seed=3), strict=True):
        assert torch.equal(a.label, b.label) and all(torch.equal(a.tokens[k], b.tokens[k]) for k in a.tokens)
    weights = {}
    for on_device in (False, True):
        config = RunConfig(data=DATA, model={"name": "dnn", "hidden_units": [16], "dropout": 0.1},
                           train={"epochs": 2, "batch_size": 256, "seed": 1, "progress": False,
                                  "split_on_device": on_device})
        run, _, _ = train_run(config, tmp_path / str(on_device), dataset=small_synthetic, log=lambda line: None)
        weights[on_device] = run.model.state_dict()
    assert all(torch.equal(weights[False][k], weights[True][k]) for k in weights[False])
    notes = []
    import genctr.runtime as runtime
    monkeypatch.setattr(runtime.os, "sysconf", lambda name: 1)  # no free memory: it stays put
    assert Runtime.create("cpu").resident(train, "train split", notes.append) is train
    assert "does not fit" in notes[0] and isinstance(whole_split(train).label, torch.Tensor)


def test_report_renders_the_cuda_check_beside_the_cpu(tmp_path):
    import json

    from genctr.files import append_jsonl
    from genctr.report import write_results_markdown

    results = tmp_path / "results"
    common = {"task": "ml1m-ctr", "tool": "genctr", "model": "dcnv2", "pretrain": "none", "seed": 1,
              "test_logloss": 0.58, "commit": "abc", "finished_at": "2026-12-04T00:00:00+00:00"}
    for device, speed, machine in (("cuda", 400_000.0, "NVIDIA H200, 16 cores"), ("cpu", 80_000.0, "16 cores")):
        append_jsonl(results / "device.jsonl", common | {
            "inference": "plain", "device": device, "test_auc": 0.76, "epochs": 2,
            "train_samples_per_s": speed, "epoch_seconds": 800_000 / speed, "machine": machine})
    append_jsonl(results / "device.jsonl", common | {
        "inference": "uttsi@2.0", "device": "cuda", "test_auc": 0.74, "avg_cost": 2.0,
        "latency_single_p50_ms": 3.9, "latency_single_p99_ms": 4.7, "latency_batch4096_p50_ms": 61.9,
        "latency_batch4096_p99_ms": 70.4, "machine": "NVIDIA H200, 16 cores"})
    (results / "device-pretrain.json").write_text(json.dumps({
        "task": "ml1m-ctr", "model": "hetegen", "device": "cuda", "samples_per_s": 52_000.0,
        "epoch_seconds": 15.3, "commit": "abc"}))
    text = write_results_markdown(tmp_path).read_text()
    assert "commit `abc`, machine: NVIDIA H200, 16 cores." in text
    assert "| ml1m-ctr | dcnv2 | cuda | 400,000 | 5.0x | 2.00 | 0.7600 | 0.5800 |" in text
    assert "| ml1m-ctr | dcnv2 | cpu | 80,000 |  | 10.00 |" in text
    assert "| ml1m-ctr | dcnv2 | uttsi@2.0 | cuda | 0.7400 | 2.00 | 3.90 | 4.70 | 61.9 | 70.4 |" in text
    assert "one epoch on cuda): 52,000 samples/s, 15.3 s." in text
    assert "(device.jsonl)" not in text  # its own section, not a training table mixing devices
