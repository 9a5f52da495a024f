"""Ensembles (the control for test-time compute), the selective ensemble, and the budget held
on data that is more uncertain than valid."""

import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from genctr.cli import app
from genctr.config import DataConfig, RunConfig
from genctr.errors import ConfigError, DataError
from genctr.runs import evaluate_run_inference, train_run
from genctr.testtime.budget import BudgetController
from genctr.testtime.evaluate import evaluate_inference, frequency_index, make_inference, predict_with
from genctr.testtime.index import IndexOptions
from genctr.testtime.inference import InferenceOptions
from genctr.train import predict_split


def train_dnn(dataset, folder, seed):
    data = DataConfig(source="synthetic", cache_dir=None,
                      options={"rows": 3000, "users": 200, "items": 150, "seed": 7})
    config = RunConfig(data=data, model={"name": "dnn", "hidden_units": [32], "dropout": 0.1},
                       train={"batch_size": 256, "epochs": 2, "seed": seed, "progress": False},
                       output_dir=str(folder))
    return train_run(config, folder, dataset=dataset, log=lambda line: None)[0]


@pytest.fixture(scope="module")
def runs(small_synthetic, tmp_path_factory):
    return [train_dnn(small_synthetic, tmp_path_factory.mktemp(f"seed{s}"), s) for s in (1, 2, 3)]


def logit(p):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def test_ensemble_averages_the_members_logits_or_probabilities(small_synthetic, runs):
    test = small_synthetic.splits["test"]
    probs = [predict_split(r.model, test) for r in runs]
    models = [r.model for r in runs]
    ensemble = make_inference(InferenceOptions(strategy="ensemble", members=3), members=models[1:])
    prob, cost = predict_with(ensemble, models[0], test)
    np.testing.assert_allclose(logit(prob), np.mean([logit(p) for p in probs], axis=0), atol=1e-4)
    assert np.all(cost == 3)
    by_probability = make_inference(InferenceOptions(strategy="ensemble", members=3, average="probability"),
                                    members=models[1:])
    np.testing.assert_allclose(predict_with(by_probability, models[0], test)[0], np.mean(probs, axis=0),
                               atol=1e-5)
    with pytest.raises(ConfigError, match="members 3 needs 2 other run"):
        make_inference(InferenceOptions(strategy="ensemble", members=3), members=models[1:2])


def test_selective_ensemble_gives_the_members_to_the_uncertain_within_the_budget(small_synthetic, runs):
    index = frequency_index(small_synthetic, IndexOptions(), runs[0].folder)
    models = [r.model for r in runs]
    test = small_synthetic.splits["test"]
    options = InferenceOptions(strategy="selective_ensemble", members=3, budget=1.5)
    assert (options.label(), options.describe()) == ("ensemble@1.5", "selective_ensemble3@1.5")
    result = evaluate_inference(models[0], small_synthetic, options, measure_latency=False,
                                index_folder=runs[0].folder, members=models[1:])
    assert result["test"]["avg_cost"] == pytest.approx(1.5, rel=0.02)
    assert result["valid"]["avg_cost"] == pytest.approx(1.5, rel=0.02)
    strategy = make_inference(options, index=index, members=models[1:])
    strategy.fit(models[0], small_synthetic.splits["valid"])
    prob, cost = predict_with(strategy, models[0], test)
    plain = predict_split(models[0], test)
    alone = cost == 1
    np.testing.assert_allclose(prob[alone], plain[alone], atol=1e-6)  # the certain: the model alone
    assert (~alone).any() and not np.allclose(prob[~alone], plain[~alone], atol=1e-4)
    uncertainty = (1 - np.abs(2 * plain - 1))  # the trigger's model term: explored rows are less sure
    assert uncertainty[~alone].mean() > uncertainty[alone].mean()
    # the rows granted one member get the first pair, those granted both the full ensemble
    full = make_inference(InferenceOptions(strategy="ensemble", members=3), members=models[1:])
    pair = make_inference(InferenceOptions(strategy="ensemble", members=2), members=models[1:2])
    assert (cost == 2).any()
    for granted, reference in ((3, full), (2, pair)):
        rows = cost == granted
        np.testing.assert_allclose(prob[rows], predict_with(reference, models[0], test)[0][rows], atol=1e-6)


def test_selective_ensemble_random_trigger_spends_the_same_budget_on_other_rows(small_synthetic, runs):
    index = frequency_index(small_synthetic, IndexOptions(), runs[0].folder)
    models = [r.model for r in runs]
    test = small_synthetic.splits["test"]
    costs = {}
    for trigger in ("uncertainty", "random"):
        options = InferenceOptions(strategy="selective_ensemble", members=2, budget=1.5, trigger=trigger,
                                   budget_window=0)
        strategy = make_inference(options, index=index, members=models[1:2])
        strategy.fit(models[0], small_synthetic.splits["valid"])
        costs[trigger] = predict_with(strategy, models[0], test)[1]
    assert InferenceOptions(strategy="selective_ensemble", members=2, budget=1.5,
                            trigger="random").describe() == "selective_ensemble2-random@1.5"
    assert costs["random"].sum() == costs["uncertainty"].sum()  # the same grants, permuted
    assert not np.array_equal(costs["random"], costs["uncertainty"])
    plain = predict_split(models[0], test)
    uncertainty = 1 - np.abs(2 * plain - 1)
    granted = {t: uncertainty[c > 1].mean() for t, c in costs.items()}
    assert granted["uncertainty"] > granted["random"]


@pytest.mark.parametrize("rows_per_call", [1, 500, 8192])
def test_budget_holds_on_data_more_uncertain_than_valid(rows_per_call):
    rng = np.random.default_rng(0)
    valid = rng.uniform(0, 0.5, 20_000)
    shifted = rng.uniform(0.2, 1.0, 20_000)  # e.g. a test split with more cold users
    held, fixed = BudgetController(2.0, 8, 4096), BudgetController(2.0, 8, 0)
    for controller in (held, fixed):
        controller.fit(valid)
    assert controller.valid_cost == pytest.approx(2.0, rel=0.01)
    costs = {id(c): [] for c in (held, fixed)}
    for start in range(0, len(shifted), rows_per_call):
        chunk = shifted[start:start + rows_per_call]
        for controller in (held, fixed):
            costs[id(controller)].append(controller.allocate(chunk))
    if rows_per_call > held.window:  # a batch larger than the window is held by itself
        assert all(1 + c.mean() == pytest.approx(2.0, rel=0.02) for c in costs[id(held)][:-1])
    held_cost = 1 + np.concatenate(costs[id(held)]).mean()
    fixed_cost = 1 + np.concatenate(costs[id(fixed)]).mean()
    assert held_cost == pytest.approx(2.0, rel=0.02)
    assert fixed_cost > 2.5  # the threshold fitted on valid alone overshoots: the test has teeth


def test_a_large_batch_after_an_underspent_valid_does_not_oscillate():
    rng = np.random.default_rng(1)
    controller = BudgetController(1.5, 1, 4096)
    controller.fit(rng.uniform(0, 1, 10_000))
    controller.spent -= 500  # valid left a debt of 500 passes
    costs = [1 + controller.allocate(rng.uniform(0, 1, 32_768)).mean() for _ in range(4)]
    assert costs[0] == pytest.approx(1.5 + 500 / 32_768, abs=1e-3)  # repaid within one batch
    assert all(c == pytest.approx(1.5, abs=1e-3) for c in costs[1:])


def test_a_budget_that_threshold_zero_cannot_spend_steepens_the_allocation():
    uncertainty = np.random.default_rng(2).uniform(0, 0.2, 10_000)  # ceil(8u) <= 2: cost <= 3
    controller = BudgetController(4.0, 8, 0)
    controller.fit(uncertainty)
    assert controller.threshold == 0.0 and controller.gain > 1
    assert controller.valid_cost == pytest.approx(4.0, rel=0.02)
    extra = controller.allocate(uncertainty)
    assert np.all(np.diff(extra[np.argsort(uncertainty)]) >= 0)  # still grows with u


def test_budget_one_or_an_infinite_threshold_explores_nobody():
    controller = BudgetController(1.0, 4, 4096)
    controller.fit(np.linspace(0, 1, 1000))
    assert math.isinf(controller.threshold)
    assert controller.allocate(np.linspace(0, 1, 100)).sum() == 0


def test_cli_evaluate_ensemble_with_members_and_a_member_of_other_data(small_synthetic, runs, tmp_path):
    result = CliRunner().invoke(app, ["evaluate", str(runs[0].folder), "--inference", "ensemble",
                                      "--members", str(runs[1].folder), "--split", "test"])
    assert result.exit_code == 0, result.output
    assert "ensemble@2" in result.output and "test 2.000" in result.output
    wrong = CliRunner().invoke(app, ["evaluate", str(runs[0].folder), "--inference", "uttsi",
                                     "--members", str(runs[1].folder)])
    assert wrong.exit_code != 0 and "only for --inference ensemble" in str(wrong.exception)
    from genctr.data.sources import make_source
    from genctr.data.store import encode_source
    other = encode_source(make_source("synthetic", rows=2000, users=90, items=70, seed=3))
    stranger = train_dnn(other, tmp_path / "other", 1)
    with pytest.raises(DataError, match="encoder differs"):
        evaluate_run_inference(runs[0], small_synthetic, InferenceOptions(strategy="ensemble"),
                               members=[stranger.folder], measure_latency=False)


def test_the_refit_window_is_always_the_last_rows_whatever_the_request_sizes():
    rng = np.random.default_rng(3)
    controller = BudgetController(2.0, 8, 64)
    seen = rng.uniform(0, 1, 40).astype(np.float32)  # valid shorter than the window
    controller.fit(seen)
    for rows in (1, 7, 16, 30, 64, 3, 100, 1, 63, 65, 5):
        chunk = rng.uniform(0, 1, rows).astype(np.float32)
        seen = np.concatenate([seen, chunk])
        latest = controller._remember(chunk)  # what the refit of this request sees
        assert np.array_equal(np.sort(latest), np.sort(seen[-max(64, rows):]))
    controller._remember(np.array([0.5]))  # a float64 row after float32 ones is kept exactly
    assert controller.recent.dtype == np.float64
