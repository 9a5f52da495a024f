"""Every backbone learns, honours `drop`, and the neutral embedding is what a dropped field gets."""

import numpy as np
import pytest
import torch

from genctr.config import DataConfig, RunConfig
from genctr.data.batches import batch_of
from genctr.data.sources import make_source
from genctr.data.store import encode_source
import genctr.pretrain  # noqa: F401  (registers hetegen)
from genctr.models import MODELS, build_model
from genctr.nn.embedding import field_infos, set_neutral_mode
from genctr.runs import train_run
from genctr.schema import OOV
from genctr.train import predict_split


@pytest.fixture(scope="module")
def learnable():
    """Small synthetic data with few users and items, so that every model can learn fast."""
    return encode_source(make_source("synthetic", rows=20_000, users=150, items=100, seed=3))


SMALL = {"lr": {}, "fm": {}, "dnn": {"hidden_units": [64, 32]}, "widedeep": {"hidden_units": [64]},
         "deepfm": {"hidden_units": [64]}, "dcnv2": {"hidden_units": [64], "cross_layers": 2},
         "autoint": {"attention_layers": 1, "attention_dim": 16, "hidden_units": [64]},
         "finalmlp": {"stream1_units": [64], "stream2_units": [64], "selection_units": 32,
                      "fusion_heads": 4},
         "din": {"hidden_units": [64], "attention_units": [16]},
         "hetegen": {"embedding_dim": 16, "layers": 1, "heads": 2}}


def test_every_registered_model_is_covered():
    assert set(SMALL) == set(MODELS)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_backbone_learns_well_above_chance(name, learnable, tmp_path):
    config = RunConfig(data=DataConfig(source="synthetic", cache_dir=None), model={"name": name, **SMALL[name]},
                       train={"batch_size": 256, "learning_rate": 3e-3, "epochs": 6, "seed": 1,
                              "progress": False}, output_dir=str(tmp_path))
    _, _, metrics = train_run(config, dataset=learnable, log=lambda line: None)
    # the click model has strong interactions: a linear model gets ~0.63, the others ~0.70-0.74
    floor = 0.61 if name == "lr" else 0.66
    assert metrics["test"]["auc"] > floor, metrics["test"]["auc"]


@pytest.mark.parametrize("name", sorted(SMALL))
def test_dropping_every_field_gives_one_output_for_all_rows(name, learnable):
    torch.manual_seed(0)
    model = build_model(name, field_infos(learnable.encoder), SMALL[name])
    for p in model.parameters():  # move off the tiny initialisation so that rows differ
        torch.nn.init.normal_(p, std=0.3)
    test = learnable.splits["test"]
    everything = torch.ones(len(test), len(test.tokens), dtype=torch.bool)
    dropped = predict_split(model, test, drop=everything)
    kept = predict_split(model, test)
    assert np.ptp(dropped) < 1e-5
    assert np.ptp(kept) > 1e-2


def test_neutral_embedding_is_the_training_frequency_weighted_mean(learnable):
    model = build_model("dnn", field_infos(learnable.encoder), {"hidden_units": [8]})
    embedding = model.embedding
    neutral = embedding.neutral()
    for i, field in enumerate(["item_id", "hour", "hist_items"]):
        f = embedding.fields[embedding.field_index(field)]
        counts = learnable.encoder.train_counts(f.table).astype(np.float64)
        weights = embedding.tables[f.table].weight.detach().numpy()
        expected = counts @ weights / counts.sum()
        np.testing.assert_allclose(neutral[embedding.field_index(field)].detach().numpy(),
                                   expected, rtol=1e-5, atol=1e-7)


def test_neutral_embedding_is_reused_while_scoring_until_a_table_changes(learnable):
    model = build_model("dnn", field_infos(learnable.encoder), {"hidden_units": [8]})
    embedding = model.embedding
    with torch.no_grad():
        first = embedding.neutral()
        assert embedding.neutral() is first  # nothing changed: the same tensor
        embedding.tables["item_id"].weight.mul_(3.0)  # an optimizer step or a loaded checkpoint
        changed = embedding.neutral()
    item = embedding.field_index("item_id")
    assert changed is not first
    torch.testing.assert_close(changed[item], 3.0 * first[item])
    torch.testing.assert_close(changed, embedding._neutral())
    set_neutral_mode(model, "zero")
    with torch.no_grad():
        assert embedding.neutral().abs().sum() == 0  # the mode is part of what is reused
    set_neutral_mode(model, "mean")
    assert embedding.neutral().requires_grad  # with gradients on it is computed afresh


def test_a_dropped_field_receives_the_neutral_embedding_and_others_do_not_change(learnable):
    model = build_model("dnn", field_infos(learnable.encoder), {"hidden_units": [8]})
    batch = batch_of(learnable.splits["test"], slice(0, 32))
    drop = torch.zeros(32, model.embedding.num_fields, dtype=torch.bool)
    hour = model.embedding.field_index("hour")
    drop[:5, hour] = True
    plain, dropped = model.embedding(batch), model.embedding(batch, drop)
    neutral = model.embedding.neutral()[hour]
    assert torch.allclose(dropped[:5, hour], neutral.expand(5, -1))
    assert torch.equal(dropped[5:], plain[5:])
    others = [i for i in range(model.embedding.num_fields) if i != hour]
    assert torch.equal(dropped[:5, others], plain[:5, others])


def test_scaled_numeric_embedding_uses_the_value_and_a_missing_vector(learnable):
    model = build_model("dnn", field_infos(learnable.encoder), {"numeric_embedding": "scaled",
                                                               "hidden_units": [8]})
    batch = batch_of(learnable.splits["test"], slice(0, 16))
    price = model.embedding.field_index("price")
    vectors = model.embedding(batch)[:, price]
    value_vector, missing_vector = model.embedding.value_vectors["price"]
    expected = batch.values["price"].unsqueeze(-1) * value_vector
    missing = batch.tokens["price"] == OOV
    assert torch.allclose(vectors[~missing], expected[~missing])
    assert torch.allclose(vectors[missing], missing_vector.expand(int(missing.sum()), -1))


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
def test_dropout_keeps_one_minus_p_and_preserves_the_mean(p):
    from genctr.nn.blocks import Dropout
    torch.manual_seed(0)
    dropout = Dropout(p)
    x = torch.ones(1000, 1001)  # an odd element count: the last 64-bit draw is only partly used
    y = dropout(x)
    kept = (y != 0).float().mean().item()
    assert abs(kept - (1 - p)) < 0.003
    assert abs(y.mean().item() - 1.0) < 0.01
    assert torch.unique(y).tolist() == pytest.approx([0.0, 1 / (1 - p)])
    per_column = (y != 0).float().mean(0)  # each of the four 16-bit lanes is uniform
    assert per_column.min().item() > 1 - p - 0.07
    dropout.eval()
    assert torch.equal(dropout(x), x)


def test_dropout_masks_follow_torch_manual_seed():
    from genctr.nn.blocks import Dropout
    dropout, x = Dropout(0.2), torch.ones(64, 33)
    torch.manual_seed(7)
    first = dropout(x)
    torch.manual_seed(7)
    assert torch.equal(dropout(x), first)
    assert not torch.equal(dropout(x), first)  # the generator moved on


def test_cross_network_under_bf16_autocast_stays_close_to_fp32():
    from genctr.nn.blocks import CrossNetV2
    torch.manual_seed(0)
    cross, x = CrossNetV2(48, 3), torch.randn(256, 48) * 0.1
    exact = cross(x)
    with torch.autocast("cpu", torch.bfloat16):
        fast = cross(x)
    assert fast.dtype == torch.bfloat16  # the whole cross network runs in the autocast dtype
    assert torch.allclose(fast.float(), exact, rtol=0.05, atol=0.02)


REPRESENTABLE = sorted(n for n, cls in MODELS.items() if cls.can_represent)


def test_every_model_with_a_separable_output_layer_can_be_a_denoiser():
    assert REPRESENTABLE == ["autoint", "dcnv2", "deepfm", "din", "dnn", "finalmlp", "widedeep"]
    assert not MODELS["lr"].can_represent and not MODELS["fm"].can_represent


@pytest.mark.parametrize("name", REPRESENTABLE)
def test_represent_then_score_is_the_model_and_a_balanced_pretraining_step_works(name, learnable):
    from genctr.nn.blocks import fm_interaction
    from genctr.pretrain.backbone import BackboneNet
    from genctr.pretrain.balance import BalancerOptions
    from genctr.pretrain.corruption import CorruptionOptions
    from genctr.pretrain.heads import HeadOptions

    torch.manual_seed(0)
    fields = field_infos(learnable.encoder)
    model = build_model(name, fields, SMALL[name]).eval()
    batch = batch_of(learnable.splits["test"], slice(0, 64))
    with torch.no_grad():
        hidden = model.represent(batch)
        assert hidden.shape == (64, model.hidden_dim)
        logits = model.score(hidden)
        assert torch.equal(model(batch), logits)
        if name in ("widedeep", "deepfm"):  # the published formulas, term by term
            embedded = model.embedding(batch)
            expected = model.mlp(embedded.flatten(1)).squeeze(-1) + model.linear(batch)
            if name == "deepfm":
                expected = expected + fm_interaction(embedded)
            torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    net = BackboneNet(fields, name, SMALL[name], "mfp", HeadOptions(sampled_above=50),
                      BalancerOptions(name="self_balancing"), CorruptionOptions())
    loss, _, field_losses = net.losses(batch, net.masks(batch, torch.Generator().manual_seed(1)))
    loss.backward()
    assert torch.isfinite(loss) and field_losses.present[:-1].any()
    assert net.backbone.embedding.tables[fields[0].table].weight.grad is not None
