"""Training across processes: torchrun with 2 gloo workers on CPU against one process with the
same global batch."""

import json
import subprocess
import sys

import numpy as np
import torch
import pytest
import yaml

from genctr.data.sources import make_source
from genctr.data.store import prepare
from genctr.distributed import Distributed
from genctr.runs import evaluate_split, load_run

CONFIG = {"data": {"source": "synthetic", "cache_dir": "cache",
                   "options": {"rows": 3000, "users": 200, "items": 150, "seed": 7}},
          "model": {"name": "dnn", "hidden_units": [32, 16], "dropout": 0.0, "batch_norm": False},
          "train": {"batch_size": 250, "epochs": 3, "seed": 1, "embedding_l2": 0.01,
                    "progress": False}}


def test_shards_cover_a_batch_once_in_order():
    for rows in (1, 7, 250, 251):
        parts = [Distributed(rank, 3).shard(rows) for rank in range(3)]
        covered = [i for part in parts for i in range(rows)[part]]
        assert covered == list(range(rows))
        assert max(p.stop - p.start for p in parts) - min(p.stop - p.start for p in parts) <= 1


def test_two_gloo_processes_train_like_one_with_the_same_global_batch(tmp_path):
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(CONFIG))
    single = subprocess.run([sys.executable, "-m", "genctr", "train", "run.yaml", "--output", "one"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stdout + single.stderr
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node", "2", "-m", "genctr", "train", "run.yaml", "--output", "two"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stdout + ddp.stderr
    assert ddp.stdout.count("epoch 0:") == 1  # rank 0 alone speaks
    one, two = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("one", "two"))
    assert two["training"]["processes"] == 2 and one["training"]["processes"] == 1
    assert one["training"]["epochs"] == two["training"]["epochs"]
    assert two["test"]["auc"] == pytest.approx(one["test"]["auc"], abs=1e-3)  # stated tolerance
    assert len((tmp_path / "two" / "history.jsonl").read_text().splitlines()) == two["training"]["epochs"]
    # rank 0's test metrics are those of every test row, scored once
    dataset = prepare(make_source("synthetic", rows=3000, users=200, items=150, seed=7), None)
    reloaded = evaluate_split(load_run(tmp_path / "two").model, dataset.splits["test"])
    assert reloaded["auc"] == pytest.approx(two["test"]["auc"], abs=1e-9)
    # the test-time index: built per rank on its shard, merged by rank 0 = the whole split's
    from genctr.nn.embedding import field_infos
    from genctr.testtime.index import INDEX_FILE, FrequencyIndex

    assert "frequency index built on 2 processes and merged" in ddp.stdout
    fields = field_infos(dataset.encoder)
    merged = FrequencyIndex.load(tmp_path / "two" / INDEX_FILE, fields)
    whole = FrequencyIndex.build(dataset.splits["train"], fields)
    assert merged.rows == whole.rows == len(dataset.splits["train"])
    for order, counter in whole.counters.items():
        np.testing.assert_array_equal(merged.counters[order].sketch.table, counter.sketch.table)
    weights_one = load_run(tmp_path / "one").model.state_dict()
    weights_two = load_run(tmp_path / "two").model.state_dict()
    for key, value in weights_one.items():
        np.testing.assert_allclose(weights_two[key].numpy(), value.numpy(), atol=2e-3, err_msg=key)


def test_a_ddp_run_resumes_to_the_same_weights(tmp_path):
    config = CONFIG | {"model": CONFIG["model"] | {"dropout": 0.1}}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "genctr", "train"]
    for name, epochs in (("whole", 2), ("part", 1)):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(config | {"train": config["train"] | {"epochs": epochs}}))
        done = subprocess.run(torchrun + [f"{name}.yaml", "--output", name], cwd=tmp_path,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
    resumed = subprocess.run(torchrun + ["whole.yaml", "--output", "part", "--resume"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed after epoch 1" in resumed.stdout
    whole, part = (load_run(tmp_path / name).model.state_dict() for name in ("whole", "part"))
    for key, value in whole.items():
        np.testing.assert_array_equal(part[key].numpy(), value.numpy(), err_msg=key)


PRETRAIN = {"data": CONFIG["data"],
            "pretrain": {"epochs": 2, "batch_size": 256, "objective": "mfp", "seed": 3,
                         "denoiser": {"backbone": "dnn", "backbone_options": {"hidden_units": [32]}},
                         "balancer": {"name": "self_balancing"}, "heads": {"sampled_above": 100}}}


def test_pretraining_under_torchrun_resumes_and_learns_like_one_process(tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "genctr", "pretrain"]
    one_epoch = PRETRAIN | {"pretrain": PRETRAIN["pretrain"] | {"epochs": 1}}
    for name, config in (("whole", PRETRAIN), ("part", one_epoch)):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(config))
        done = subprocess.run(torchrun + [f"{name}.yaml", "--output", name], cwd=tmp_path,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
    resumed = subprocess.run(torchrun + ["whole.yaml", "--output", "part", "--resume"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    single = subprocess.run([sys.executable, "-m", "genctr", "pretrain", "whole.yaml", "--output", "one"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stdout + single.stderr
    from genctr.files import load_tensors
    whole, part = (load_tensors(tmp_path / name / "pretrain.pt", "weights") for name in ("whole", "part"))
    for key, value in whole.items():
        assert torch.equal(part[key], value), key
    histories = {name: [json.loads(x) for x in (tmp_path / name / "history.jsonl").read_text().splitlines()]
                 for name in ("whole", "one")}
    assert len(histories["whole"]) == 2
    for field, loss in histories["one"][-1]["field_loss"].items():  # the same objective, other masks
        assert histories["whole"][-1]["field_loss"][field] == pytest.approx(loss, rel=0.1), field
