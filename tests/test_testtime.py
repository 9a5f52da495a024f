"""FrequencyIndex bounds and merging, MATT and UTTSI semantics, neutral embeddings, the CLI."""

import itertools
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from genctr.cli import app
from genctr.config import DataConfig, RunConfig
from genctr.data.batches import batch_of
from genctr.errors import ConfigError
from genctr.models import build_model
from genctr.nn.embedding import field_infos, set_neutral_mode
from genctr.runs import evaluate_run_inference, load_run, train_run
from genctr.testtime.confidence import Confidence
from genctr.testtime.evaluate import evaluate_inference, frequency_index, make_inference, predict_with
from genctr.testtime.index import FrequencyIndex, IndexOptions, field_value_column, tokens_of
from genctr.testtime.inference import InferenceOptions
from genctr.testtime.paths import sample_confidence_paths
from genctr.testtime.sketch import FrequencyCounter, combine
from genctr.testtime.budget import extra_paths, fit_threshold


def zipf_stream(n: int, distinct: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ranks = np.minimum(rng.zipf(1.3, n), distinct)
    return (ranks * 7919 + 13).astype(np.uint64)  # arbitrary, distinct keys


def true_counts(stream: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keys, counts = np.unique(stream, return_counts=True)
    return keys, counts


@pytest.mark.parametrize("width", [2 ** 8, 2 ** 12])
def test_sketch_never_undercounts_and_its_lower_bound_holds(width):
    stream = zipf_stream(200_000, 50_000, seed=1)
    keys, counts = true_counts(stream)
    counter = FrequencyCounter(depth=5, width=width, heavy_hitters=100)  # narrow: collisions
    for chunk in np.array_split(stream, 7):
        counter.add(chunk)
    lower, estimate, upper = counter.bounds(keys)
    assert np.all(upper >= counts) and np.array_equal(estimate, upper)
    assert upper.sum() > counts.sum() * 1.05  # the narrow sketch does overcount: the test has teeth
    assert np.mean(lower > counts) <= math.exp(-5)  # the guarantee: P(lower > true) <= e^-depth
    assert np.all(lower <= upper) and lower.sum() < counts.sum()
    top = np.argsort(-counts)[:20]  # heavy hitters from the first chunk on: exact
    assert np.array_equal(estimate[top], counts[top]) and np.array_equal(lower[top], counts[top])
    unseen = np.arange(1, 1001, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    whole = FrequencyCounter(depth=5, width=width, heavy_hitters=10 ** 6)  # holds every key
    whole.add(stream)
    for one in (counter, whole):  # the served lookup's estimate is bounds()' to the last key
        asked = np.concatenate([keys, unseen])
        np.testing.assert_array_equal(one.estimate(asked), one.bounds(asked)[1])
    assert counter.heavy.overflowed and not whole.heavy.overflowed


def test_merged_shards_equal_the_index_built_on_the_union(small_synthetic):
    infos = field_infos(small_synthetic.encoder)
    train = small_synthetic.splits["train"]
    options = IndexOptions(order3=[["user_id", "item_id", "hour"]], width=2 ** 10, heavy_hitters=10 ** 6)
    half = len(train) // 2
    first = FrequencyIndex.build(train.take(np.arange(half)), infos, options)
    second = FrequencyIndex.build(train.take(np.arange(half, len(train))), infos, options)
    whole = FrequencyIndex.build(train, infos, options)
    merged = first.merge(FrequencyIndex.from_bytes(second.to_bytes(), infos))  # as sent between ranks
    tokens = tokens_of(small_synthetic.splits["test"], fields=whole.names)
    for order, counts in whole.frequencies(tokens).items():  # every key held: exact, equal
        np.testing.assert_array_equal(merged.frequencies(tokens)[order], counts)


def test_merged_shards_keep_every_occurrence_and_valid_bounds_when_tables_overflow(small_synthetic):
    infos = field_infos(small_synthetic.encoder)
    train = small_synthetic.splits["train"]
    options = IndexOptions(width=2 ** 8, heavy_hitters=50, chunk_rows=400)
    half = len(train) // 2
    merged = FrequencyIndex.build(train.take(np.arange(half)), infos, options).merge(
        FrequencyIndex.build(train.take(np.arange(half, len(train))), infos, options))
    keys = merged.keys_of(tokens_of(train, fields=merged.names))[2].ravel()
    truth_keys, truth = np.unique(keys, return_counts=True)
    counter = merged.counters[2]
    assert counter.heavy.overflowed and len(counter.heavy.keys) == 50
    assert counter.sketch.total + counter.heavy.counts.sum() == len(keys)  # nothing lost or doubled
    lower, _, upper = merged.count(2, truth_keys)
    assert np.all(upper >= truth)
    assert np.mean(lower > truth) <= 0.05


def test_index_counts_are_exact_when_every_key_is_a_heavy_hitter(small_synthetic):
    infos = field_infos(small_synthetic.encoder)
    train = small_synthetic.splits["train"]
    index = FrequencyIndex.build(train, infos, IndexOptions(chunk_rows=500))
    user = index.names.index("user_id")
    counts = index.frequencies(tokens_of(train, fields=index.names))[1][:, user]
    tokens = np.asarray(train.tokens["user_id"])
    expected = np.bincount(tokens)[tokens]
    np.testing.assert_array_equal(counts, expected)


def test_an_orders_keys_hashed_at_once_equal_one_hash_per_combination(small_synthetic):
    infos = field_infos(small_synthetic.encoder)
    index = FrequencyIndex(infos, IndexOptions(order3=[["user_id", "item_id", "hour"]]))
    tokens = tokens_of(small_synthetic.splits["test"], fields=index.names)
    values = {name: field_value_column(column) for name, column in tokens.items()}
    keys = index.keys_of(tokens)  # the keys a saved index was counted with must not change
    for order, combos in index.combos.items():
        for i, combo in enumerate(combos):
            one = combine(order * 1_000_000 + i, [values[name] for name in combo])
            np.testing.assert_array_equal(keys[order][:, i], one)
    assert keys[3].shape == (len(small_synthetic.splits["test"]), 1)


def test_a_small_batchs_list_values_from_the_memo_equal_the_hashed_sets(monkeypatch):
    import genctr.testtime.index as index_module

    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 30, (40, 5)).astype(np.int32)
    tokens[rng.random(tokens.shape) < 0.3] = 0  # padding
    hashed = index_module._hash_sets(tokens)
    monkeypatch.setattr(index_module, "MEMO_SETS", 36)  # the third batch starts it over
    monkeypatch.setattr(index_module, "_SET_VALUES", {})
    for batch in (tokens[:8], tokens[:8], tokens[8:], tokens[::-1][:8]):  # new, known, evicted
        expected = index_module._hash_sets(batch)
        np.testing.assert_array_equal(field_value_column(batch), expected)
        assert len(index_module._SET_VALUES) <= 36
    np.testing.assert_array_equal(field_value_column(tokens[:8, ::-1]), hashed[:8])  # a set: any order
    assert np.array_equal(field_value_column(tokens), hashed)  # more rows than MEMO_ROWS: hashed
    assert len(np.unique(hashed)) > 30  # distinct sets get distinct values: the test has teeth


@pytest.mark.parametrize("table_tokens", [1 << 20, 100])  # every combination that can be, or a few
def test_order1_and_order2_frequencies_from_the_token_tables_equal_the_hashed_estimates(
        small_synthetic, monkeypatch, table_tokens):
    import genctr.testtime.index as index_module

    monkeypatch.setattr(index_module, "TOKEN_TABLE_TOKENS", table_tokens)
    infos = field_infos(small_synthetic.encoder)
    train, test = small_synthetic.splits["train"], small_synthetic.splits["test"]
    options = IndexOptions(width=2 ** 8, heavy_hitters=50, order3="all")  # overflowing: sketch estimates too
    index = FrequencyIndex.build(train, infos, options)
    tokens = tokens_of(test, fields=index.names)

    def hashed_estimates() -> dict[int, np.ndarray]:
        return {order: index.count(order, keys.ravel())[1].reshape(keys.shape)
                for order, keys in index.keys_of(tokens).items()}

    for order, counts in hashed_estimates().items():
        np.testing.assert_array_equal(index.frequencies(tokens)[order], counts)
    tags = index.names.index("tags")
    for order in (1, 2):
        table = index._token_table(order)
        tabled, rest = table.tabled, table.hashed
        with_tags = [c for c, members in enumerate(index.pair_members(order).tolist()) if tags in members]
        assert set(with_tags) <= set(rest.tolist())  # a list field's value is a hashed set: no table
        assert (len(tabled) == len(index.combos[order]) - len(with_tags)) == (table_tokens > 1000)
        assert len(tabled) and len(rest)
    other = FrequencyIndex.build(test, infos, options)  # a merge changes the counts: tables rebuilt
    index.merge(other)
    for order, counts in hashed_estimates().items():
        np.testing.assert_array_equal(index.frequencies(tokens)[order], counts)


def test_index_save_and_load_give_the_same_frequencies(small_synthetic, tmp_path):
    infos = field_infos(small_synthetic.encoder)
    index = FrequencyIndex.build(small_synthetic.splits["train"], infos, IndexOptions(order3="all"))
    index.save(tmp_path / "index.npz")
    loaded = FrequencyIndex.load(tmp_path / "index.npz", infos)
    tokens = tokens_of(small_synthetic.splits["test"], fields=index.names)
    for order, counts in index.frequencies(tokens).items():
        np.testing.assert_array_equal(loaded.frequencies(tokens)[order], counts)
    for order in index.reference_quantiles:
        np.testing.assert_array_equal(loaded.reference_quantiles[order], index.reference_quantiles[order])


def test_unknown_index_field_is_named(small_synthetic):
    with pytest.raises(ConfigError, match="index.fields: unknown field 'nope'"):
        FrequencyIndex(field_infos(small_synthetic.encoder), IndexOptions(fields=["nope"]))


# ------------------------------------------------------------------ strategies on a trained model
@pytest.fixture(scope="module")
def trained(small_synthetic, tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    data = DataConfig(source="synthetic", cache_dir=None,  # the same rows as small_synthetic
                      options={"rows": 3000, "users": 200, "items": 150, "seed": 7})
    config = RunConfig(data=data, model={"name": "dnn", "hidden_units": [32], "dropout": 0.1},
                       train={"batch_size": 256, "epochs": 3, "seed": 1, "progress": False},
                       output_dir=str(folder))
    run, _, _ = train_run(config, folder, dataset=small_synthetic, log=lambda line: None)
    return run


def test_paths_with_all_confidences_one_drop_nothing(small_synthetic, trained):
    index = frequency_index(small_synthetic, IndexOptions(order3="all"), trained.folder)
    rows, fields = 50, trained.model.embedding.num_fields
    ones = Confidence(np.ones((rows, fields), np.float32),
                      {o: np.ones((rows, len(c)), np.float32) for o, c in index.combos.items()},
                      np.ones(rows, np.float32))
    drops = sample_confidence_paths(ones, index, 16, torch.Generator().manual_seed(0))
    assert not drops.any()


def test_the_compiled_walk_draws_the_paths_of_the_walk_written_out(small_synthetic, trained):
    index = frequency_index(small_synthetic, IndexOptions(order3="all"), trained.folder)
    matt = make_inference(InferenceOptions(strategy="matt"), index=index)
    num_fields = trained.model.embedding.num_fields
    for rows, paths in ((1, 1), (3, 2), (8, 4), (40, 3)):
        batch = batch_of(small_synthetic.splits["test"], slice(0, rows))
        conf = matt.confidence(batch)
        assert set(conf.orders) >= {2, 3}
        base = torch.rand(rows, num_fields, generator=torch.Generator().manual_seed(rows)) < 0.1
        drawn = sample_confidence_paths(conf, index, paths, torch.Generator().manual_seed(1), base_drop=base)
        generator = torch.Generator().manual_seed(1)  # the same draws, in the same order
        kept = ((torch.rand(paths, rows, num_fields, generator=generator).numpy() < conf.fields)
                & ~base.numpy()).tolist()  # the filtered fields: dropped before the walk
        for order in (2, 3):
            members = index.member_positions(order).tolist()
            draws = torch.rand(paths, rows, len(members), generator=generator).numpy()
            for path, row, c in itertools.product(range(paths), range(rows), range(len(members))):
                fields = kept[path][row]
                if draws[path, row, c] >= conf.orders[order][row, c] and all(fields[m] for m in members[c]):
                    fields[min(members[c], key=lambda m: conf.fields[row, m])] = False  # first of equals
        assert np.array_equal(drawn.numpy(), ~np.array(kept)) and drawn.any() and not drawn.all()


def test_matt_with_all_confidences_one_equals_plain(small_synthetic, trained, monkeypatch):
    index = frequency_index(small_synthetic, IndexOptions(), trained.folder)
    matt = make_inference(InferenceOptions(strategy="matt", paths=6), index=index)
    plain = make_inference(InferenceOptions(strategy="plain"))
    test = small_synthetic.splits["test"]

    def full_confidence(batch):
        rows = len(batch)
        return Confidence(np.ones((rows, trained.model.embedding.num_fields), np.float32),
                          {o: np.ones((rows, len(c)), np.float32) for o, c in index.combos.items() if c},
                          np.ones(rows, np.float32))

    monkeypatch.setattr(matt, "confidence", full_confidence)
    matt_prob, matt_cost = predict_with(matt, trained.model, test)
    plain_prob, plain_cost = predict_with(plain, trained.model, test)
    np.testing.assert_allclose(matt_prob, plain_prob, rtol=1e-6)
    assert matt_cost.mean() == 6 and plain_cost.mean() == 1


def test_matt_drops_rare_features_more_often(small_synthetic, trained):
    index = frequency_index(small_synthetic, IndexOptions(), trained.folder)
    batch = batch_of(small_synthetic.splits["test"], slice(0, 500))
    matt = make_inference(InferenceOptions(strategy="matt"), index=index)
    conf = matt.confidence(batch)
    drops = sample_confidence_paths(conf, index, 64, torch.Generator().manual_seed(0))
    rate = drops.float().mean(0)  # [B, F]
    user = trained.model.embedding.field_index("user_id")
    rare, common = conf.fields[:, user] < 0.5, conf.fields[:, user] >= 0.99
    assert rare.any() and common.any()
    assert rate[rare, user].mean() > 0.3 > 0.05 > rate[common, user].mean()


def test_uttsi_with_budget_one_runs_only_the_filtered_pass(small_synthetic, trained):
    result = evaluate_run_inference(trained, small_synthetic, InferenceOptions(strategy="uttsi", budget=1.0),
                                measure_latency=False)
    assert result["valid"]["avg_cost"] == 1.0 and result["test"]["max_cost"] == 1.0
    assert math.isinf(result["uttsi"]["threshold"])


@pytest.mark.parametrize("budget", [1.5, 2.0, 2.8])
def test_uttsi_cost_on_valid_stays_within_the_budget(small_synthetic, trained, budget):
    result = evaluate_run_inference(trained, small_synthetic,
                                InferenceOptions(strategy="uttsi", budget=budget, max_paths=6),
                                splits=("valid",), measure_latency=False)
    assert result["valid"]["avg_cost"] <= budget * 1.05
    assert result["valid"]["avg_cost"] > 1 + 0.5 * (budget - 1)  # the budget is actually spent


def test_uttsi_consistency_aggregate_weighs_paths_by_distance_from_the_lower_median():
    from genctr.testtime.uttsi import UTTSI

    rng = np.random.default_rng(0)
    paths = rng.integers(1, 9, size=50)  # extra paths per explored instance
    path_of, member = np.nonzero(np.arange(paths.max())[:, None] < paths[None, :])
    first = rng.random(50).astype(np.float32)
    sampled = rng.random(len(path_of)).astype(np.float32)
    strategy = UTTSI.__new__(UTTSI)
    strategy.options = InferenceOptions(strategy="uttsi", mix=0.7, consistency_temperature=0.05)
    got = strategy._aggregate(first, sampled, path_of, member, paths)
    for i in range(50):  # per instance, in plain Python: its 1 + K values
        values = sorted([float(first[i]), *sampled[member == i].tolist()])
        median = values[(len(values) - 1) // 2]  # the lower middle one, as torch.nanmedian
        weights = [math.exp(-abs(v - median) / 0.05) for v in values]
        aggregate = sum(w * v for w, v in zip(weights, values)) / sum(weights)
        assert got[i] == pytest.approx(0.7 * aggregate + 0.3 * float(first[i]), abs=1e-6)


def test_uttsi_threshold_fit_and_paths_grow_with_uncertainty():
    uncertainty = np.linspace(0, 1, 1001)
    threshold = fit_threshold(uncertainty, 2.0, 8)
    paths = extra_paths(uncertainty, threshold, 8)
    assert 1 + paths.mean() <= 2.0
    assert np.all(np.diff(paths) >= 0) and paths[0] == 0 and paths[-1] == 8
    assert math.isinf(fit_threshold(uncertainty, 1.0, 8))


def test_the_refit_cost_counted_by_binary_search_is_the_full_mean_to_the_last_row():
    from genctr.testtime.budget import _mean_cost

    rng = np.random.default_rng(0)
    # float64 and float32 (what UTTSI's uncertainties are), values on a grid that lands on K
    # boundaries exactly (0.5 + k * 0.125 at τ = 0.5, M = 4), ties, and all zeros
    for uncertainty in (rng.beta(0.5, 2, 4096), rng.beta(0.5, 2, 4096).astype(np.float32),
                        np.round(rng.random(777), 2), np.round(rng.random(777), 3).astype(np.float32),
                        np.repeat(np.arange(0, 1, 0.125), 9), np.zeros(5)):
        ascending = np.sort(uncertainty)
        for threshold in (0.0, 0.01, 0.25, 0.5, float(np.median(uncertainty)), 0.99,
                          float(uncertainty[0]) + 1e-9):
            for gain in (1.0, 3.5, 47.0):
                for max_extra in (1, 4, 8):
                    paths = extra_paths(uncertainty, threshold, max_extra, gain)
                    # the compiled K is the documented expression, as numpy evaluates it
                    span = max(1.0 - threshold, 1e-9)
                    written = np.clip(np.ceil(gain * max_extra * (uncertainty - threshold) / span), 1, max_extra)
                    assert np.array_equal(paths, np.where(uncertainty >= threshold, written, 0))
                    assert _mean_cost(ascending, threshold, max_extra, gain) == 1 + paths.mean()


def test_uttsi_random_trigger_has_the_same_cost(small_synthetic, trained):
    options = dict(strategy="uttsi", budget=2.0, max_paths=4)
    chosen = evaluate_run_inference(trained, small_synthetic, InferenceOptions(**options),
                                splits=("test",), measure_latency=False)
    random = evaluate_run_inference(trained, small_synthetic, InferenceOptions(**options, trigger="random"),
                                splits=("test",), measure_latency=False)
    assert chosen["test"]["avg_cost"] == pytest.approx(random["test"]["avg_cost"])
    assert chosen["inference"] == random["inference"] == "uttsi@2.0"
    assert (chosen["strategy"], random["strategy"]) == ("uttsi@2.0", "uttsi-random@2.0")


def test_temperature_control_keeps_auc_and_fits_logloss(small_synthetic, trained):
    plain = evaluate_run_inference(trained, small_synthetic, InferenceOptions(), measure_latency=False)
    scaled = evaluate_run_inference(trained, small_synthetic, InferenceOptions(strategy="temperature"),
                                measure_latency=False)
    assert scaled["test"]["auc"] == pytest.approx(plain["test"]["auc"], abs=1e-6)
    assert scaled["valid"]["logloss"] <= plain["valid"]["logloss"] + 1e-9


def test_latency_is_reported(small_synthetic, trained):
    result = evaluate_run_inference(trained, small_synthetic, InferenceOptions(strategy="matt", paths=4),
                                splits=("test",))
    latency = result["latency"]
    assert 0 < latency["single_p50_ms"] <= latency["single_p99_ms"]
    assert 0 < latency["batch4096_p50_ms"] <= latency["batch4096_p99_ms"]


# ------------------------------------------------------------------ neutral embeddings, field dropout
def test_neutral_modes_zero_and_learned(small_synthetic):
    infos = field_infos(small_synthetic.encoder)
    plain = build_model("dnn", infos, {"hidden_units": [8]})
    set_neutral_mode(plain, "zero")
    assert torch.equal(plain.embedding.neutral(), torch.zeros_like(plain.embedding.neutral()))
    with pytest.raises(ConfigError, match="learned_neutral"):
        set_neutral_mode(plain, "learned")
    learned = build_model("deepfm", infos, {"hidden_units": [8], "learned_neutral": True})
    batch = batch_of(small_synthetic.splits["test"], slice(0, 8))
    drop = torch.ones(8, learned.embedding.num_fields, dtype=torch.bool)
    with torch.no_grad():
        learned.embedding.learned_neutral.fill_(0.5)
    assert torch.allclose(learned.embedding(batch, drop), torch.full((8, len(infos), 10), 0.5))


def test_field_dropout_trains_the_learned_neutral_embedding(small_synthetic, tmp_path):
    config = RunConfig(data=DataConfig(source="synthetic", cache_dir=None),
                       model={"name": "dnn", "hidden_units": [16], "learned_neutral": True},
                       train={"batch_size": 256, "epochs": 1, "seed": 1, "progress": False,
                              "field_dropout": 0.2}, output_dir=str(tmp_path))
    run, _, metrics = train_run(config, tmp_path / "run", dataset=small_synthetic, log=lambda line: None)
    assert run.model.embedding.learned_neutral.abs().sum() > 0  # it started at zero
    assert metrics["test"]["auc"] > 0.55
    assert load_run(tmp_path / "run").model.embedding.neutral_mode == "learned"


def test_cli_evaluate_with_inference(trained):
    result = CliRunner().invoke(app, ["evaluate", str(trained.folder), "--inference", "uttsi",
                                      "--budget", "1.5", "--split", "valid"])
    assert result.exit_code == 0, result.output
    assert "uttsi@1.5" in result.output and "valid 1.5" in result.output
    bad = CliRunner().invoke(app, ["evaluate", str(trained.folder), "--inference", "matt", "-o", "mixx=1"])
    assert bad.exit_code != 0 and "unknown key 'mixx'" in str(bad.exception)


def test_per_combination_reference_compares_a_field_with_itself(small_synthetic):
    from genctr.testtime.confidence import ConfidenceOptions, confidence
    infos = field_infos(small_synthetic.encoder)
    index = FrequencyIndex.build(small_synthetic.splits["train"], infos, IndexOptions())
    tokens = tokens_of(small_synthetic.splits["test"], fields=index.names)
    pooled = confidence(index, tokens, ConfidenceOptions())
    own = confidence(index, tokens, ConfidenceOptions(per="combination"))
    user, gender = index.names.index("user_id"), index.names.index("gender")
    median_user = np.interp(0.5, np.linspace(0, 1, 101), index.combination_quantiles[1][user])
    counts = index.frequencies(tokens)[1][:, user]
    expected = np.minimum(np.log1p(counts) / np.log1p(median_user), 1.0)
    position = index.field_positions()
    np.testing.assert_allclose(own.fields[:, position[user]], expected, rtol=1e-5)
    assert own.fields[:, position[user]].mean() > pooled.fields[:, position[user]].mean()  # ids are rare overall
    assert np.all(own.orders[1][:, gender] > 0.9)


def test_run_index_rebuilds_a_file_of_another_format_or_options(small_synthetic, trained):
    import json as json_module
    from genctr.testtime.index import INDEX_FILE
    path = trained.folder / INDEX_FILE
    index = frequency_index(small_synthetic, IndexOptions(), trained.folder)
    assert FrequencyIndex.saved_with(path, IndexOptions())
    assert not FrequencyIndex.saved_with(path, IndexOptions(width=2 ** 10))
    arrays = dict(np.load(path))
    meta = json_module.loads(bytes(arrays["meta"]).decode()) | {"format": 1}
    arrays["meta"] = np.frombuffer(json_module.dumps(meta).encode(), dtype=np.uint8)
    np.savez(path, **arrays)  # as an older version of the code would have left it
    assert not FrequencyIndex.saved_with(path, IndexOptions())
    rebuilt = frequency_index(small_synthetic, IndexOptions(), trained.folder)
    assert FrequencyIndex.saved_with(path, IndexOptions())
    np.testing.assert_array_equal(rebuilt.reference_quantiles[1], index.reference_quantiles[1])


# every strategy on every backbone (LR included: its per-value weights stand in for an embedding)
SMALL_MODELS = {"lr": {}, "fm": {}, "dnn": {"hidden_units": [16], "dropout": 0.1},
                "widedeep": {"hidden_units": [16], "dropout": 0.1},
                "deepfm": {"hidden_units": [16], "dropout": 0.1},
                "dcnv2": {"hidden_units": [16], "cross_layers": 1, "dropout": 0.1},
                "autoint": {"attention_layers": 1, "attention_dim": 8, "hidden_units": [16], "dropout": 0.1},
                "finalmlp": {"stream1_units": [16], "stream2_units": [16], "selection_units": 8,
                             "fusion_heads": 2},
                "din": {"hidden_units": [16], "attention_units": [8], "dropout": 0.1},
                "hetegen": {"embedding_dim": 8, "layers": 1, "heads": 2, "dropout": 0.1}}


@pytest.mark.parametrize("name", sorted(SMALL_MODELS))
def test_every_strategy_runs_on_every_backbone(name, small_synthetic):
    import dataclasses
    from typing import get_args

    from genctr.models import MODELS
    from genctr.testtime.inference import Strategy

    assert set(SMALL_MODELS) == set(MODELS)
    torch.manual_seed(0)
    model = build_model(name, field_infos(small_synthetic.encoder), SMALL_MODELS[name])
    for p in model.parameters():  # off the tiny initialisation, so that predictions differ
        torch.nn.init.normal_(p, std=0.1)
    small = small_synthetic.splits["test"].take(np.arange(300))
    dataset = dataclasses.replace(small_synthetic, splits={**small_synthetic.splits, "valid": small,
                                                           "test": small})
    member = build_model(name, field_infos(small_synthetic.encoder), SMALL_MODELS[name])
    for p in member.parameters():
        torch.nn.init.normal_(p, std=0.1)
    for strategy in get_args(Strategy):
        options = InferenceOptions(strategy=strategy, **({"paths": 3} if strategy in ("matt", "random", "mcdropout") else {}))
        if strategy == "mcdropout" and name in ("lr", "fm"):  # nothing to sample: one clear line
            with pytest.raises(ConfigError, match="has no dropout layer"):
                evaluate_inference(model, dataset, options, measure_latency=False)
            continue
        members = [member] if "ensemble" in strategy else []
        result = evaluate_inference(model, dataset, options, measure_latency=False, members=members)
        assert 0 <= result["test"]["auc"] <= 1 and result["test"]["avg_cost"] >= 1, (name, strategy)


def test_field_dropout_trains_lr(small_synthetic, tmp_path):
    config = RunConfig(data=DataConfig(source="synthetic", cache_dir=None), model={"name": "lr"},
                       train={"batch_size": 256, "epochs": 1, "seed": 1, "progress": False,
                              "field_dropout": 0.2}, output_dir=str(tmp_path))
    _, _, metrics = train_run(config, dataset=small_synthetic, log=lambda line: None)
    assert metrics["test"]["auc"] > 0.55


# ------------------------------------------------------------------ value-level confidence
def test_value_level_confidence_trusts_values_from_min_count_on(small_synthetic):
    from genctr.testtime.confidence import ConfidenceOptions, confidence
    index = FrequencyIndex.build(small_synthetic.splits["train"], field_infos(small_synthetic.encoder),
                                 IndexOptions())
    tokens = tokens_of(small_synthetic.splits["test"], fields=index.names)
    counts = index.frequencies(tokens)[1]
    conf = confidence(index, tokens, ConfidenceOptions(level="value", min_count=20))
    assert np.all(conf.orders[1][counts >= 20] == 1)
    below = counts < 20
    assert below.any() and np.all(conf.orders[1][below] < 1)
    np.testing.assert_allclose(conf.orders[1][below], np.log1p(counts[below]) / np.log1p(20), rtol=1e-5)
    pooled = confidence(index, tokens, ConfidenceOptions())
    user = index.names.index("user_id")  # the pooled reference distrusts ids wholesale, values do not
    assert (conf.orders[1][:, user] == 1).mean() > (pooled.orders[1][:, user] == 1).mean()
    with pytest.raises(ConfigError, match="min_count"):
        confidence(index, tokens, ConfidenceOptions(level="value"))


@pytest.mark.parametrize("trigger", ["uncertainty", "random"])
def test_warm_up_runs_every_loop_and_leaves_the_fitted_strategy_as_it_was(small_synthetic, trained,
                                                                         trigger):
    """A server warms each strategy before its first request: afterwards every compiled loop
    has run, and the strategy scores exactly as one that was never warmed (same random draws,
    same budget window and spending)."""
    from genctr.testtime import kernels
    index = frequency_index(small_synthetic, IndexOptions(), trained.folder)
    options = InferenceOptions(strategy="uttsi", budget=2.0, trigger=trigger, budget_window=256)
    warmed, cold = make_inference(options, index=index), make_inference(options, index=index)
    for strategy in (warmed, cold):
        strategy.fit(trained.model, small_synthetic.splits["valid"])
    warmed.warm_up(trained.model, small_synthetic.splits["valid"])
    for kernel in (kernels.lookup_confidence, kernels.keep_confident,
                   kernels.walk_combinations, kernels.aggregate_paths, kernels.fit_sorted):
        assert kernel.signatures, kernel
    test = small_synthetic.splits["test"]
    for start in range(0, 600, 100):  # several batches: the window refits in between
        batch = batch_of(test, slice(start, start + 100))
        for got, expected in zip(warmed.predict(trained.model, batch), cold.predict(trained.model, batch)):
            np.testing.assert_array_equal(got, expected)
    assert warmed.budget.spent == cold.budget.spent and warmed.budget.threshold == cold.budget.threshold
    if trigger == "random":
        assert warmed.budget.shuffle is warmed.generator  # the restored budget draws from it still


def test_served_batch_sizes_compile_nothing_after_warm_up(small_synthetic, trained):
    """After warm-up, requests of 1 to 8 rows (one explored path among them: arrays numba sees
    as contiguous where a large batch's are strided) run only loops already compiled: a
    compile inside a request stalled a server for 2.6 s."""
    from numba.core.registry import CPUDispatcher

    from genctr.testtime import kernels
    index = frequency_index(small_synthetic, IndexOptions(), trained.folder)
    uttsi = make_inference(InferenceOptions(strategy="uttsi", budget=2.0), index=index)
    matt = make_inference(InferenceOptions(strategy="matt", paths=4), index=index)
    for strategy in (uttsi, matt):
        strategy.fit(trained.model, small_synthetic.splits["valid"])
        strategy.warm_up(trained.model, small_synthetic.splits["valid"])
    compiled = lambda: {n: list(k.signatures) for n, k in vars(kernels).items()  # noqa: E731
                        if isinstance(k, CPUDispatcher)}
    warmed, single_paths = compiled(), 0
    test = small_synthetic.splits["test"]
    for start, rows in zip(range(0, 800, 8), itertools.cycle(range(1, 9))):
        batch = batch_of(test, slice(start, start + rows))
        _, cost = uttsi.predict(trained.model, batch)
        single_paths += int((cost > 1).sum() == 1 and cost.max() == 2)
        matt.predict(trained.model, batch)
    assert single_paths and compiled() == warmed


def test_confidence_is_the_documented_formula_of_the_counts(small_synthetic):
    """confidence() (compiled per entry) against its formula written out in numpy: min(1,
    f(n) / f(n_ref)) per combination, 1 where n_ref <= 0, and the prior the mean of the chosen
    orders' row means."""
    from genctr.testtime.confidence import ConfidenceOptions, confidence, reference_count
    index = FrequencyIndex.build(small_synthetic.splits["train"], field_infos(small_synthetic.encoder),
                                 IndexOptions(order3=[["user_id", "item_id", "gender"]]))
    tokens = tokens_of(small_synthetic.splits["test"], fields=index.names)
    counts = index.frequencies(tokens)
    for options in (ConfidenceOptions(), ConfidenceOptions(scale="linear", per="combination"),
                    ConfidenceOptions(reference="count", count=5.0, orders=[1, 2, 3]),
                    ConfidenceOptions(per="combination", quantile=0.0, orders=[2])):
        conf = confidence(index, tokens, options)
        expected = {}
        for order, n in counts.items():
            reference = np.maximum(reference_count(index, order, options), 0.0)
            scaled = (np.log1p(n) / np.log1p(reference) if options.scale == "log" else n / reference)
            expected[order] = np.where(reference <= 0, 1.0, np.minimum(scaled, 1.0)).astype(np.float32)
            np.testing.assert_array_equal(conf.orders[order], expected[order])
        prior = np.mean([expected[o].mean(axis=1) for o in options.orders], axis=0)
        np.testing.assert_array_equal(conf.prior, prior.astype(np.float32))
    trusted = confidence(index, tokens, ConfidenceOptions(per="combination", quantile=0.0))
    assert (trusted.orders[2] == 1).all(axis=0).any()  # some pair's least count is 0: trusted


def test_value_level_min_count_is_fitted_on_valid_and_the_filter_drops_only_rarer_values(
        small_synthetic, trained):
    from genctr.testtime.confidence import MIN_COUNT_GRID
    index = frequency_index(small_synthetic, IndexOptions(), trained.folder)
    options = InferenceOptions(strategy="uttsi", budget=1.0, filter_threshold=1.0,
                               confidence={"level": "value"})
    uttsi = make_inference(options, index=index)
    uttsi.fit(trained.model, small_synthetic.splits["valid"])
    min_count = uttsi.confidence_options.min_count
    assert min_count in MIN_COUNT_GRID
    batch = batch_of(small_synthetic.splits["test"], slice(0, 500))
    dropped = uttsi.filtered(uttsi.confidence(batch))[:, index.field_positions()].numpy()
    counts = index.frequencies(tokens_of(batch, fields=index.names))[1]
    np.testing.assert_array_equal(dropped, counts < min_count)
    result = evaluate_run_inference(trained, small_synthetic, options, measure_latency=False)
    assert result["test"]["avg_cost"] == 1.0 and 0.5 < result["test"]["auc"] <= 1
