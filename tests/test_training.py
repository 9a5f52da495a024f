"""Trainer: determinism, resume after a kill, save/load in a fresh process, NaN handling."""

import json
import os
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
import torch
import yaml

from genctr.config import DataConfig, RunConfig
from genctr.runs import load_run, predict_file, train_run
from genctr.train import Trainer, TrainingDiverged


def config(tmp_path, **train):
    return RunConfig(data=DataConfig(source="synthetic", cache_dir=str(tmp_path / "cache"),
                                     options={"rows": 6000, "users": 100, "items": 80}),
                     model={"name": "dnn", "hidden_units": [32], "dropout": 0.2},
                     train={"batch_size": 256, "epochs": 4, "patience": 10, "seed": 5,
                            "progress": False, **train},
                     output_dir=str(tmp_path / "runs"))


def quiet(line):
    pass


def test_same_seed_repeats_exactly(tmp_path):
    _, _, first = train_run(config(tmp_path), tmp_path / "a", log=quiet)
    _, _, second = train_run(config(tmp_path), tmp_path / "b", log=quiet)
    assert first["test"]["auc"] == second["test"]["auc"]
    _, _, other = train_run(config(tmp_path, seed=6), tmp_path / "c", log=quiet)
    assert other["test"]["auc"] != first["test"]["auc"]


def test_resume_after_a_kill_reaches_the_same_metrics(tmp_path, monkeypatch):
    run, _, uninterrupted = train_run(config(tmp_path), tmp_path / "full", log=quiet)
    original = Trainer._train_epoch

    def killed_in_epoch_2(self, forward, model, optimizer, train, state):
        if state.epoch == 2:
            raise KeyboardInterrupt("simulated kill")
        return original(self, forward, model, optimizer, train, state)

    monkeypatch.setattr(Trainer, "_train_epoch", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train_run(config(tmp_path), tmp_path / "killed", log=quiet)
    history = [json.loads(x) for x in (tmp_path / "killed" / "history.jsonl").read_text().splitlines()]
    assert len(history) == 2
    monkeypatch.setattr(Trainer, "_train_epoch", original)
    resumed, state, metrics = train_run(config(tmp_path), tmp_path / "killed", resume=True, log=quiet)
    assert len(state.history) == 4
    assert metrics["test"]["auc"] == uninterrupted["test"]["auc"]
    for a, b in zip(run.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


def test_early_stopping_reloads_the_best_epoch_and_decays_lr(tmp_path):
    _, state, metrics = train_run(config(tmp_path, epochs=30, patience=2, learning_rate=0.01),
                                  tmp_path / "r", log=quiet)
    history = state.history
    assert len(history) < 30 and not history[-1]["improved"] and not history[-2]["improved"]
    best = max(h["valid_auc"] for h in history)
    assert metrics["valid"]["auc"] == pytest.approx(best, abs=1e-9)
    assert history[-1]["lr"] == pytest.approx(0.01 * 0.1 ** 2)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    cfg = config(tmp_path)
    original = Trainer._train_epoch

    def poison_epoch_1(self, forward, model, optimizer, train, state):
        if state.epoch == 1:
            with torch.no_grad():
                next(iter(model.mlp.parameters())).fill_(float("nan"))
        return original(self, forward, model, optimizer, train, state)

    monkeypatch.setattr(Trainer, "_train_epoch", poison_epoch_1)
    with pytest.raises(TrainingDiverged, match="loss became nan in epoch 1, batch 0; the checkpoint "
                                               "after epoch 0 is kept"):
        train_run(cfg, tmp_path / "nan", log=quiet)
    saved = torch.load(tmp_path / "nan" / "checkpoint.pt", weights_only=True)
    assert saved["state"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())


def test_saved_run_loads_in_a_fresh_process_with_identical_predictions(tmp_path):
    run, _, _ = train_run(config(tmp_path), tmp_path / "run", log=quiet)
    rows = pl.DataFrame({
        "user_id": ["u1", "never-seen"], "item_id": ["i2", "i99999"], "item_category": ["c1", "c?"],
        "gender": ["F", "?"], "age": ["3", "99"], "region": ["r1", "r-1"],
        "device": ["mobile", "toaster"], "hour": ["20", "25"], "price": ["9.5", ""],
        "tags": ["t1|t2", "t999"], "hist_items": ["i1^i2", ""], "hist_len": ["2", "0"]})
    rows.write_csv(tmp_path / "rows.csv")
    predict_file(run, tmp_path / "rows.csv", tmp_path / "here.csv")
    script = (f"from genctr.runs import load_run, predict_file; "
              f"predict_file(load_run({str(tmp_path / 'run')!r}), {str(tmp_path / 'rows.csv')!r}, "
              f"{str(tmp_path / 'there.csv')!r})")
    subprocess.run([sys.executable, "-c", script], check=True)
    here = pl.read_csv(tmp_path / "here.csv")["probability"].to_numpy()
    there = pl.read_csv(tmp_path / "there.csv")["probability"].to_numpy()
    np.testing.assert_array_equal(here, there)
    assert np.all((here > 0) & (here < 1))
    reloaded = load_run(tmp_path / "run")
    for a, b in zip(run.model.state_dict().values(), reloaded.model.state_dict().values()):
        assert torch.equal(a, b)


def test_saved_config_round_trips(tmp_path):
    run, _, _ = train_run(config(tmp_path), tmp_path / "run", log=quiet)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert RunConfig.model_validate(saved) == run.config


def test_label_fraction_takes_a_seeded_sample_in_order(small_synthetic):
    from genctr.data.labelled import labelled_rows

    train = small_synthetic.splits["train"]
    tenth = labelled_rows(train, 0.1, seed=1)
    assert len(tenth) == round(0.1 * len(train))
    again, other = labelled_rows(train, 0.1, seed=1), labelled_rows(train, 0.1, seed=2)
    assert np.array_equal(tenth.tokens["user_id"], again.tokens["user_id"])
    assert not np.array_equal(tenth.tokens["user_id"], other.tokens["user_id"])
    assert labelled_rows(train, 1.0, seed=1) is train


def test_adamw_warm_up_and_label_fraction_train(tmp_path):
    _, state, metrics = train_run(config(tmp_path, optimizer="adamw", weight_decay=0.05,
                                         warmup_steps=10, label_fraction=0.5, epochs=2),
                                  tmp_path / "r", log=quiet)
    assert len(state.history) == 2 and metrics["test"]["auc"] > 0.55
    with pytest.raises(ValueError, match="weight_decay needs optimizer: adamw"):
        config(tmp_path, weight_decay=0.05)


def test_warm_up_raises_the_learning_rate_linearly(tmp_path):
    trainer = Trainer(config(tmp_path, warmup_steps=4, learning_rate=0.01).train, tmp_path / "w", quiet)
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    seen = []
    for step in range(6):
        trainer._warm_up(optimizer, step)
        seen.append(optimizer.param_groups[0]["lr"])
    assert seen == pytest.approx([0.0025, 0.005, 0.0075, 0.01, 0.01, 0.01])


def test_batch_scoped_embedding_l2_covers_the_looked_up_rows_once(small_synthetic, tmp_path):
    import torch
    from torch import nn

    from genctr.data.batches import batch_of
    from genctr.models import build_model
    from genctr.nn.embedding import field_infos
    from genctr.train import LookupRecorder, regularization

    model = build_model("dnn", field_infos(small_synthetic.encoder), {"hidden_units": [8]})
    recorder = LookupRecorder(model)
    model.train()
    batch = batch_of(small_synthetic.splits["train"], slice(0, 64))
    model(batch)
    table = model.embedding.tables["user_id"]
    ids = torch.unique(batch.tokens["user_id"].long())
    expected = sum(0.5 * m.weight[torch.unique(torch.cat(recorder.looked_up[m]))].pow(2).sum()
                   for m in model.modules() if isinstance(m, nn.Embedding))
    got = regularization(model, 1.0, 0.0, recorder.looked_up)
    assert torch.allclose(got, expected)
    assert got < regularization(model, 1.0, 0.0)  # whole tables: more rows
    assert torch.equal(torch.unique(torch.cat(recorder.looked_up[table])), ids)
    got.backward()
    untouched = torch.ones(table.weight.shape[0], dtype=torch.bool)
    untouched[ids] = False
    assert table.weight.grad[untouched].abs().sum() == 0 and table.weight.grad[ids].abs().sum() > 0
    model.eval()
    recorder.clear()
    model(batch)
    assert not recorder.looked_up  # validation passes are not recorded
    config = RunConfig(data=DataConfig(source="synthetic", cache_dir=None), model={"name": "dnn", "hidden_units": [8]},
                       train={"batch_size": 256, "epochs": 1, "seed": 1, "progress": False,
                              "embedding_l2": 0.01, "embedding_l2_scope": "batch"})
    _, _, metrics = train_run(config, tmp_path / "run", dataset=small_synthetic, log=lambda line: None)
    assert metrics["test"]["auc"] > 0.55


def test_sparse_embeddings_touch_only_the_rows_a_step_used(small_synthetic, tmp_path):
    """train.sparse_embeddings: sparse table gradients + lazy Adam. One step leaves every row it
    did not look up exactly as it was (dense Adam would move none either at step 1, but its
    table-wide moments and L2 would cost a pass over the table); a run learns like dense Adam,
    and resumes from its checkpoint."""
    from genctr.data.batches import batch_of
    from genctr.models import build_model
    from genctr.nn.embedding import field_infos
    from genctr.nn.sparse import SparseDenseAdam
    from genctr.train import TrainConfig, TrainState

    cfg = TrainConfig(sparse_embeddings=True, embedding_l2=0.01, embedding_l2_scope="batch",
                      progress=False)
    trainer = Trainer(cfg, tmp_path / "step", log=lambda line: None)
    model = build_model("dnn", field_infos(small_synthetic.encoder), {"hidden_units": [8]})
    from genctr.train import LookupRecorder
    trainer.lookups = LookupRecorder(model)
    optimizer = trainer.optimizer(model)
    assert isinstance(optimizer, SparseDenseAdam)
    table = model.embedding.tables["user_id"]
    before = table.weight.detach().clone()
    batch = batch_of(small_synthetic.splits["train"], slice(0, 64))
    model.train()
    trainer.train_step(model, model, optimizer, batch)
    assert table.weight.grad.is_sparse
    used = torch.unique(batch.tokens["user_id"].long())
    untouched = torch.ones(len(before), dtype=torch.bool)
    untouched[used] = False
    assert torch.equal(table.weight.detach()[untouched], before[untouched])
    assert not torch.equal(table.weight.detach()[used], before[used])
    trainer.run_dir.mkdir(parents=True)
    trainer._save_checkpoint(model, optimizer, TrainState(epoch=1))
    again = build_model("dnn", field_infos(small_synthetic.encoder), {"hidden_units": [8]})
    resumed = trainer.optimizer(again)
    assert trainer._load_checkpoint(again, resumed).epoch == 1
    moments = resumed.sparse.state[again.embedding.tables["user_id"].weight]["exp_avg"]
    assert torch.equal(moments, optimizer.sparse.state[table.weight]["exp_avg"])

    def run(name, **train):
        config = RunConfig(data=DataConfig(source="synthetic", cache_dir=None),
                           model={"name": "dnn", "hidden_units": [16]},
                           train={"batch_size": 256, "epochs": 2, "seed": 1, "progress": False,
                                  "embedding_l2": 0.01, "embedding_l2_scope": "batch", **train})
        return train_run(config, tmp_path / name, dataset=small_synthetic, log=lambda line: None)[2]

    dense, sparse = run("dense"), run("sparse", sparse_embeddings=True)
    assert sparse["test"]["auc"] > 0.6 and abs(sparse["test"]["auc"] - dense["test"]["auc"]) < 0.03
    with pytest.raises(Exception, match="embedding_l2_scope: batch"):
        TrainConfig(sparse_embeddings=True, embedding_l2=0.01)


def test_resume_mid_epoch_reaches_the_same_weights(tmp_path, monkeypatch):
    """checkpoint_every_steps: a run killed inside an epoch continues from its last step
    checkpoint (same batch order, RNG and optimizer state) to the uninterrupted run's weights;
    with block shuffling and prefetching on."""
    from genctr.train import apply_step as real_step
    import genctr.train as train_module

    options = {"checkpoint_every_steps": 3, "shuffle_block_rows": 700, "prefetch": 2, "epochs": 2}
    run, _, uninterrupted = train_run(config(tmp_path, **options), tmp_path / "full", log=quiet)
    steps = 0

    def killed_at_step_8(*args, **kwargs):
        nonlocal steps
        steps += 1
        if steps == 8:
            raise KeyboardInterrupt("simulated kill")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_module, "apply_step", killed_at_step_8)
    with pytest.raises(KeyboardInterrupt):
        train_run(config(tmp_path, **options), tmp_path / "killed", log=quiet)
    monkeypatch.setattr(train_module, "apply_step", real_step)
    lines = []
    resumed, state, metrics = train_run(config(tmp_path, **options), tmp_path / "killed",
                                        resume=True, log=lines.append)
    assert any("resumed at step 6 of epoch 0" in line for line in lines)
    assert len(state.history) == 2
    assert metrics["test"]["auc"] == uninterrupted["test"]["auc"]
    for a, b in zip(run.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


def test_block_shuffle_covers_every_row_once_and_reads_block_by_block():
    from genctr.data.batches import batch_order

    order = batch_order(1000, seed=3, block_rows=128)
    assert sorted(order.tolist()) == list(range(1000))
    blocks = order // 128
    assert (np.diff(blocks) != 0).sum() == 1000 // 128  # one change of block per block boundary
    assert not np.array_equal(order, batch_order(1000, seed=4, block_rows=128))
    assert np.array_equal(order, batch_order(1000, seed=3, block_rows=128))


def test_oov_dropout_feeds_unseen_values_so_the_oov_rows_learn(small_synthetic, tmp_path):
    """train.oov_dropout replaces values by the OOV token in training steps: the OOV row of a
    table gets a gradient (without it, a train split with no unseen value never touches it)."""
    from genctr.data.batches import batch_of
    from genctr.models import build_model
    from genctr.nn.embedding import field_infos
    from genctr.schema import OOV
    from genctr.train import TrainConfig

    batch = batch_of(small_synthetic.splits["train"], slice(0, 512))
    seen = {}
    for rate in (0.0, 0.3):
        torch.manual_seed(0)
        trainer = Trainer(TrainConfig(oov_dropout=rate, progress=False), tmp_path / f"r{rate}",
                          log=lambda line: None)
        model = build_model("dnn", field_infos(small_synthetic.encoder), {"hidden_units": [8]})
        fed = []

        def forward(b, drop, model=model, fed=fed):
            fed.append(b)
            return model(b, drop)

        model.train()
        trainer.train_step(forward, model, trainer.optimizer(model), batch)
        tokens = fed[0].tokens["user_id"]
        seen[rate] = (float((tokens == OOV).float().mean()),
                      model.embedding.tables["user_id"].weight.grad[OOV].abs().sum().item())
    assert seen[0.0] == (0.0, 0.0) and (batch.tokens["user_id"] == OOV).sum() == 0
    assert 0.2 < seen[0.3][0] < 0.4 and seen[0.3][1] > 0


def test_subnormal_weights_are_saved_and_loaded_as_zero(small_synthetic, tmp_path):
    """A table row no step looks up (an OOV row) decays under the embedding L2 into subnormal
    floats, which x86 computes in microcode (a DCNv2 pass over cold rows 6x slower,
    genctr.nn.subnormal): the best weights are saved with them zeroed, load_weights zeroes them
    in files saved before, the checkpoint keeps training's exact state, and predictions of rows
    that use the row are unchanged to the bit."""
    from genctr.data.batches import batch_of
    from genctr.files import load_tensors, save_tensors_atomic
    from genctr.models import build_model
    from genctr.nn.embedding import field_infos
    from genctr.nn.subnormal import zero_subnormals
    from genctr.schema import OOV
    from genctr.train import BEST_WEIGHTS, CHECKPOINT, TrainConfig, load_weights

    state = {"w": torch.tensor([1e-39, -3e-40, 0.5, 0.0, 2e-38]), "step": torch.tensor([3])}
    zeroed = zero_subnormals(state)
    assert zeroed["w"].tolist() == [0.0, 0.0, 0.5, 0.0, torch.tensor(2e-38).item()]  # 2e-38 is normal
    assert zeroed["step"] is state["step"] and state["w"][0] != 0  # a copy; integers untouched

    torch.manual_seed(0)
    model = build_model("dcnv2", field_infos(small_synthetic.encoder), {"hidden_units": [16]})
    oov_row = "embedding.tables.user_id.weight"
    with torch.no_grad():
        model.embedding.tables["user_id"].weight[OOV] = 1e-39  # as the L2 leaves it
    cold = batch_of(small_synthetic.splits["test"], slice(0, 200))
    cold.tokens["user_id"] = torch.full_like(cold.tokens["user_id"], OOV)  # unseen users
    model.eval()
    with torch.inference_mode():
        expected = model(cold)
    save_tensors_atomic(model.state_dict(), tmp_path / "old.pt")  # a run saved before the fix
    load_weights(model, tmp_path / "old.pt")
    assert model.state_dict()[oov_row][OOV].abs().sum() == 0
    with torch.inference_mode():
        assert torch.equal(model(cold), expected)

    with torch.no_grad():
        model.embedding.tables["user_id"].weight[OOV] = 1e-39
    train = small_synthetic.splits["train"]
    assert (np.asarray(train.tokens["user_id"]) == OOV).sum() == 0  # no step touches the row
    trainer = Trainer(TrainConfig(epochs=1, progress=False), tmp_path / "run", log=quiet)
    trainer.fit(model, train, small_synthetic.splits["valid"])
    assert load_tensors(tmp_path / "run" / BEST_WEIGHTS, "weights")[oov_row][OOV].abs().sum() == 0
    kept = load_tensors(tmp_path / "run" / CHECKPOINT, "checkpoint")["model"][oov_row][OOV]
    assert torch.all(kept == 1e-39)  # training's own state resumes as it was


def test_one_seed_builds_one_model_whatever_the_hash_seed(tmp_path):
    """Initial weights depend on the seed alone: value vectors of scaled numerics were drawn in
    the order of a set of names, which follows Python's per-process string hashing (on
    ml1m-ctr one seed gave two models, 0.001 valid AUC apart after an epoch)."""
    script = (
        "import hashlib, torch\n"
        "from genctr.nn.embedding import FieldEmbedding, FieldInfo\n"
        "from genctr.schema import FieldKind\n"
        "fields = [FieldInfo(name, FieldKind.numeric, 4, name, None, (0, 1, 1, 1))\n"
        "          for name in ('price', 'age', 'hist_len', 'rating', 'year')]\n"
        "torch.manual_seed(1)\n"
        "embedding = FieldEmbedding(fields, 8, numeric='scaled')\n"
        "digest = hashlib.sha1()\n"
        "for name, tensor in embedding.state_dict().items():\n"
        "    digest.update(name.encode() + tensor.numpy().tobytes())\n"
        "print(digest.hexdigest())\n")
    digests = {subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout
               for seed in range(6)}
    assert len(digests) == 1
