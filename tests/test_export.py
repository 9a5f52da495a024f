"""`genctr export`: ONNX matches torch within 1e-5 on 1,000 rows (DNN, DCNv2, DIN, HeteGen), with
the drop input as well (random masks), the pt2 program reloads weights-only and matches exactly, and no file genctr did not make is
overwritten."""

import logging

import numpy as np
import pytest
import torch

from genctr.config import DataConfig, RunConfig
from genctr.data.batches import batch_of
from genctr.errors import DataError
from genctr.runs import load_run, train_run
from genctr.serve.export import OnnxScorer, export_run
from genctr.train import predict_split

DATA = DataConfig(source="synthetic", cache_dir=None, options={"rows": 3000, "users": 200, "items": 150, "seed": 7})
MODELS = {"dnn": {"hidden_units": [32], "numeric_embedding": "scaled", "batch_norm": True},
          "dcnv2": {"hidden_units": [32], "cross_layers": 2},
          "din": {"hidden_units": [32], "attention_units": [8]},
          "hetegen": {"embedding_dim": 16, "heads": 2, "layers": 1}}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_onnx_and_pt2_exports_match_the_torch_model(name, small_synthetic, tmp_path, caplog):
    config = RunConfig(data=DATA, model={"name": name, **MODELS[name]},
                       train={"epochs": 1, "batch_size": 256, "seed": 1, "progress": False})
    train_run(config, tmp_path / "run", dataset=small_synthetic, log=lambda line: None)
    run = load_run(tmp_path / "run")
    rows = small_synthetic.splits["train"].take(np.arange(1000))
    expected = predict_split(run.model, rows)
    with caplog.at_level(logging.WARNING):
        onnx = export_run(run, "onnx")
    assert "torchvision" not in caplog.text  # the exporter's notes on a package genctr never uses
    assert onnx == tmp_path / "run" / "model.onnx"
    assert np.abs(OnnxScorer(onnx)(rows) - expected).max() <= 1e-5
    drop = torch.rand(1000, run.model.embedding.num_fields, generator=torch.Generator().manual_seed(0)) < 0.3
    with_drop = export_run(run, "onnx", drop_input=True)  # the test-time strategies' pass
    assert with_drop == tmp_path / "run" / "model.drop.onnx"
    batch = batch_of(rows, slice(None))
    with torch.inference_mode():
        expected_logits = run.model(batch, drop)
    assert (OnnxScorer(with_drop).logits(batch, drop) - expected_logits).abs().max() <= 1e-5
    assert (OnnxScorer(with_drop).logits(batch, None) - torch.logit(torch.from_numpy(expected))).abs().max() <= 1e-4
    picked = torch.tensor([5, 0, 5, 999, 3], dtype=torch.int64)  # a strategy's paths: repeats
    scorer = OnnxScorer(with_drop)
    scorer.logits(batch, None)  # the batch's columns are kept: the next pass picks from them
    with torch.inference_mode():
        expected_picked = run.model(batch.take(picked), drop[picked])
    assert (scorer.logits(batch, drop[picked], picked) - expected_picked).abs().max() <= 1e-5
    program = torch.export.load(str(export_run(run, "pt2")))  # loads weights-only (torch's default)
    batch = batch_of(rows, slice(None))
    batch.group = None
    with torch.no_grad():
        np.testing.assert_allclose(torch.sigmoid(program.module()(batch)).numpy(), expected, atol=1e-6)
    export_run(run, "onnx")  # its own default file is replaced
    mine = tmp_path / "mine.onnx"
    mine.write_text("a user's file")
    with pytest.raises(DataError, match="already exists"):
        export_run(run, "onnx", mine)
    assert mine.read_text() == "a user's file"
