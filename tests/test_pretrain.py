"""HeteGenCTR pre-training: balancers, corruption, heads, guided attention, transfer, round trips."""

import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from genctr.cli import app
from genctr.config import DataConfig, RunConfig
from genctr.data.batches import batch_of
from genctr.data.encoded import EncodedSplit
from genctr.errors import ConfigError
from genctr.nn.embedding import field_infos
from genctr.pretrain.balance import Balancer, BalancerOptions
from genctr.pretrain.corruption import Corruption, CorruptionOptions, Masks
from genctr.pretrain.denoiser import DenoiserOptions, GuidedSelfAttention
from genctr.pretrain.heads import HeadOptions, cosine_softmax_loss
from genctr.pretrain.loop import PretrainConfig, PretrainOptions, build_network, load_pretrained, pretrain_run
from genctr.runs import load_run, train_run
from genctr.train import predict_split

SMALL = {"rows": 3000, "users": 200, "items": 150, "seed": 7}  # the rows of small_synthetic
DATA = DataConfig(source="synthetic", cache_dir=None, options=SMALL)


def fit_balancer(name: str, losses: list[float], steps: int = 3000, **options) -> Balancer:
    balancer = Balancer(BalancerOptions(name=name, **options), len(losses))
    optimizer = torch.optim.Adam(balancer.parameters(), lr=0.02)
    fixed = torch.tensor(losses)
    for _ in range(steps):
        loss, _ = balancer(fixed, torch.ones(len(losses), dtype=torch.bool))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return balancer


def test_self_balancing_s_converges_to_log_of_twice_the_loss():
    losses = [0.05, 0.7, 3.0, 9.0]
    balancer = fit_balancer("self_balancing", losses)
    np.testing.assert_allclose(balancer.log_difficulty.detach().numpy(), np.log(2 * np.array(losses)), atol=1e-2)
    _, weights = balancer(torch.tensor(losses), torch.ones(4, dtype=torch.bool))
    np.testing.assert_allclose(weights.numpy(), 1 / (2 * np.array(losses)), rtol=2e-2)  # hard fields: small


def test_proportional_direction_gives_hard_fields_more_weight():
    losses = [0.05, 0.7, 3.0, 9.0]
    balancer = fit_balancer("proportional", losses)
    np.testing.assert_allclose(balancer.log_difficulty.detach().numpy(), np.log(losses), atol=1e-2)
    _, weights = balancer(torch.tensor(losses), torch.ones(4, dtype=torch.bool))
    expected = 4 * np.array(losses) / np.sum(losses)
    np.testing.assert_allclose(weights.numpy(), expected, rtol=2e-2)
    assert weights.sum().item() == pytest.approx(4.0)


def test_absent_fields_contribute_nothing_and_uniform_is_the_plain_sum():
    losses = torch.tensor([1.0, 2.0, 4.0])
    present = torch.tensor([True, False, True])
    uniform, _ = Balancer(BalancerOptions(name="uniform"), 3)(losses, present)
    assert uniform.item() == pytest.approx(5.0)
    balancing = Balancer(BalancerOptions(name="self_balancing"), 3)
    loss, _ = balancing(losses, present)
    loss.backward()
    assert balancing.log_difficulty.grad[1].item() == 0.0
    assert loss.item() == pytest.approx(5.0)  # s = 0: uniform


def test_attention_only_ablation_fits_s_but_keeps_the_loss_uniform():
    balancer = fit_balancer("self_balancing", [0.5, 2.0], apply_weights=False)
    np.testing.assert_allclose(balancer.log_difficulty.detach().numpy(), np.log([1.0, 4.0]), atol=1e-2)
    losses = torch.tensor([0.5, 2.0], requires_grad=True)
    loss, weights = balancer(losses, torch.ones(2, dtype=torch.bool))
    loss.backward()
    np.testing.assert_allclose(losses.grad.numpy(), [1.0, 1.0])


def test_fixed_label_weight_is_one():
    balancer = fit_balancer("self_balancing", [0.5, 2.0, 0.3], label="fixed")
    losses = torch.tensor([0.5, 2.0, 0.3], requires_grad=True)
    loss, weights = balancer(losses, torch.ones(3, dtype=torch.bool))
    loss.backward()
    assert losses.grad[-1].item() == pytest.approx(1.0) and weights[-1].item() == 1.0


def test_corruption_masks_at_least_one_field_and_follows_the_schedule():
    corruption = Corruption(CorruptionOptions(), num_fields=6, sequence_index={"hist": 5})
    valid = torch.zeros(20000, 8, dtype=torch.bool)
    valid[:, :3] = True
    masks = corruption.sample(20000, {"hist": valid}, torch.Generator().manual_seed(0))
    assert masks.fields.any(dim=1).all()
    assert not (masks.positions["hist"] & ~valid).any()  # padding is never masked
    assert torch.equal(masks.fields[:, 5], masks.positions["hist"].any(dim=1))
    single = masks.fields[:, [0, 1, 2, 3, 4, 6]]  # one token each: masked with E[λ(t)] = 1/2
    assert single.float().mean().item() == pytest.approx(0.5, abs=0.03)
    cosine = Corruption(CorruptionOptions(schedule="cosine"), 6, {})
    assert cosine.rate(torch.tensor([0.5])).item() == pytest.approx(1 - math.cos(math.pi / 4))
    label_only = Corruption(CorruptionOptions(label_only_rate=1.0), 6, {"hist": 5})
    masks = label_only.sample(100, {"hist": valid[:100]})
    assert masks.fields[:, -1].all() and not masks.fields[:, :-1].any()
    assert not masks.positions["hist"].any()


def test_sampled_softmax_equals_full_softmax_when_negatives_are_the_vocabulary():
    torch.manual_seed(0)
    query, table = torch.randn(64, 16), torch.randn(50, 16)
    targets = torch.randint(0, 50, (64,))
    sampled, _ = cosine_softmax_loss(query, table, targets, torch.arange(50), temperature=0.1)
    logits = torch.nn.functional.normalize(query, dim=-1) @ torch.nn.functional.normalize(table, dim=-1).T / 0.1
    full = torch.nn.functional.cross_entropy(logits, targets)
    assert sampled.item() == pytest.approx(full.item(), rel=1e-5)
    in_batch, _ = cosine_softmax_loss(query, table, targets, torch.unique(targets), temperature=0.1)
    assert in_batch.item() < full.item()  # fewer negatives: an easier (different) objective


@pytest.mark.parametrize("side", ["query", "key"])
def test_guided_attention_scales_the_chosen_side_per_token(side):
    torch.manual_seed(0)
    attention = GuidedSelfAttention(DenoiserOptions(d_model=8, heads=2, guidance=side))
    x, scale = torch.randn(3, 5, 8), torch.tensor([1.0, 0.5, 2.0, 1.0, 0.25])
    q, k, v = attention.qkv(x).view(3, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
    if side == "query":
        q = q * scale.view(1, 1, 5, 1)
    else:
        k = k * scale.view(1, 1, 5, 1)
    weights = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)  # sqrt(head_dim 4)
    expected = attention.out((weights @ v).transpose(1, 2).reshape(3, 5, 8))
    torch.testing.assert_close(attention(x, scale), expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(attention(x, scale), attention(x, None))
    scaled_query_rows = attention(x, torch.where(torch.arange(5) == 2, 2.0, 1.0))
    if side == "query":  # a query scale changes only that token's own output
        torch.testing.assert_close(scaled_query_rows[:, [0, 1, 3, 4]], attention(x, None)[:, [0, 1, 3, 4]])


@pytest.mark.parametrize("guidance", ["query", "key"])
def test_computing_only_the_label_token_gives_the_full_forward_label_vector(small_synthetic, guidance):
    from genctr.models import build_model

    model = build_model("hetegen", field_infos(small_synthetic.encoder),
                        {"embedding_dim": 16, "heads": 2, "layers": 3, "guidance": guidance}).eval()
    model.log_difficulty.copy_(torch.linspace(-1.0, 2.0, len(model.log_difficulty)))
    batch = batch_of(small_synthetic.splits["test"], slice(0, 32))
    masks = Masks.label_only(32, len(model.denoiser.fields), model.denoiser.sequences)
    with torch.no_grad():
        full = model.denoiser(batch, masks, log_difficulty=model.log_difficulty)
        label = model.denoiser(batch, masks, log_difficulty=model.log_difficulty,
                               query_token=model.denoiser.label_token)
    assert label.shape == (32, 1, 16)
    torch.testing.assert_close(label[:, 0], full[:, model.denoiser.label_token], rtol=1e-5, atol=1e-6)


def test_pooled_sequence_tokens_give_the_history_one_token_reconstructed_as_a_set(small_synthetic, tmp_path):
    fields = field_infos(small_synthetic.encoder)
    positions = build_network(fields, PretrainOptions())
    pooled = build_network(fields, PretrainOptions(denoiser={"sequence_tokens": "pooled"}))
    assert pooled.denoiser.num_tokens == len(fields) + 1  # one per field and the label
    assert positions.denoiser.num_tokens > pooled.denoiser.num_tokens
    history = next(f for f in fields if f.name == "hist_items")
    assert pooled.heads.kind(history) == "set" and positions.heads.kind(history) != "set"
    batch = batch_of(small_synthetic.splits["train"], slice(0, 128))
    masks = pooled.masks(batch, torch.Generator().manual_seed(1))
    assert masks.positions == {}
    hidden = pooled.denoiser(batch, masks)
    losses = pooled.heads(hidden, batch, masks, pooled.denoiser)
    where = [f.name for f in fields].index("hist_items")
    assert losses.present[where] and torch.isfinite(losses.losses).all()
    # the fine-tuned model takes the option from the pre-training and scores rows
    folder = tmp_path / "pooled"
    pretrain_run(PretrainConfig(data=DATA, pretrain={"epochs": 1, "batch_size": 256,
                                                     "denoiser": {"sequence_tokens": "pooled"}}),
                 folder, log=lambda line: None)
    config = RunConfig(data=DATA, model={"name": "hetegen"}, init_from=str(folder),
                       train={"batch_size": 256, "epochs": 1, "seed": 1, "progress": False})
    run, _, metrics = train_run(config, tmp_path / "ft", dataset=small_synthetic, log=lambda line: None)
    assert run.model.denoiser.num_tokens == len(fields) + 1
    assert run.config.model["sequence_tokens"] == "pooled" and metrics["test"]["auc"] > 0.55


def test_only_masked_occurrences_contribute_to_a_field_loss(small_synthetic):
    net = build_network(field_infos(small_synthetic.encoder), PretrainOptions())
    batch = batch_of(small_synthetic.splits["train"], slice(0, 64))
    masks = net.masks(batch, torch.Generator().manual_seed(1))
    user = [f.name for f in net.fields].index("user_id")
    hidden = torch.randn(64, net.denoiser.num_tokens, net.denoiser.options.d_model)
    before = net.heads(hidden, batch, masks, net.denoiser)
    changed = batch_of(small_synthetic.splits["train"], slice(0, 64))
    changed.tokens["user_id"] = changed.tokens["user_id"].clone()  # a slice's tensors share the split's memory
    visible = ~masks.fields[:, user]
    changed.tokens["user_id"][visible] = 2  # other targets where user_id is not masked
    after = net.heads(hidden, changed, masks, net.denoiser)
    assert after.losses[user].item() == pytest.approx(before.losses[user].item())
    changed.tokens["user_id"][~visible] = 2  # where it is masked: the loss moves
    assert net.heads(hidden, changed, masks, net.denoiser).losses[user].item() != pytest.approx(before.losses[user].item())
    nothing = Masks.label_only(64, len(net.fields), net.denoiser.sequences)
    only_label = net.heads(hidden, batch, nothing, net.denoiser)
    assert only_label.present.tolist() == [False] * len(net.fields) + [True]
    assert only_label.losses[:-1].abs().sum().item() == 0.0


def test_scoring_a_random_subset_of_occurrences_estimates_the_field_loss_without_bias(small_synthetic):
    net = build_network(field_infos(small_synthetic.encoder), PretrainOptions())
    batch = batch_of(small_synthetic.splits["train"], slice(0, 256))
    masks = net.masks(batch, torch.Generator().manual_seed(1))
    hidden = torch.randn(256, net.denoiser.num_tokens, net.denoiser.options.d_model)
    full = net.heads(hidden, batch, masks, net.denoiser).losses
    net.heads.options = net.heads.options.model_copy(update={"max_scored": 8})
    torch.manual_seed(0)
    draws = torch.stack([net.heads(hidden, batch, masks, net.denoiser).losses for _ in range(400)])
    assert not torch.allclose(draws[0], draws[1])  # a different subset each time
    assert torch.allclose(draws.mean(0), full, rtol=0.05, atol=0.02)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pretrain") / "run"
    config = PretrainConfig(data=DATA, pretrain={"epochs": 1, "batch_size": 256, "log_every": 2,
                                                 "corruption": {"label_only_rate": 0.3},
                                                 "heads": {"sampled_above": 100}})
    pretrain_run(config, folder, log=lambda line: None)
    return folder


def test_pretraining_run_logs_fields_and_round_trips(pretrained, small_synthetic):
    assert {"fields.md", "fields.json", "field_weights.png", "history.jsonl", "trajectory.jsonl"} <= {
        p.name for p in pretrained.iterdir()}
    text = (pretrained / "fields.md").read_text()
    assert "| user_id | id |" in text and "| label | label |" in text and "sampled" in text
    _, _, first = load_pretrained(pretrained)
    _, _, second = load_pretrained(pretrained)
    batch = batch_of(small_synthetic.splits["test"], slice(0, 128))
    masks = first.masks(batch, torch.Generator().manual_seed(3))
    first.eval(), second.eval()
    with torch.no_grad():
        a, _, la = first.losses(batch, masks)
        b, _, lb = second.losses(batch, masks)
    assert a.item() == b.item() and torch.equal(la.losses, lb.losses)
    assert first.balancer.log_difficulty.abs().sum() > 0  # s moved from 0


def test_pretraining_embedding_l2_keeps_the_field_tables_small(small_synthetic, tmp_path):
    """pretrain.embedding_l2 pulls the field tables (only them) towards 0, as training's does."""
    options = {"epochs": 1, "batch_size": 256, "learning_rate": 0.05, "heads": {"sampled_above": 100}}
    nets = {}
    for l2 in (0.0, 1.0):
        pretrain_run(PretrainConfig(data=DATA, pretrain=options | {"embedding_l2": l2}), tmp_path / str(l2),
                     dataset=small_synthetic, log=lambda line: None)
        nets[l2] = load_pretrained(tmp_path / str(l2))[2]
    norm = lambda net: sum(t.weight.norm() ** 2 for t in net.embedding.tables.values()).sqrt()  # noqa: E731
    assert norm(nets[1.0]) < 0.5 * norm(nets[0.0])
    label = lambda net: net.denoiser.label_embedding.weight.norm()  # noqa: E731
    assert label(nets[1.0]) > 0.5 * label(nets[0.0])  # not a field table: no pull


def test_full_transfer_fine_tunes_and_reloads_identically(pretrained, small_synthetic, tmp_path):
    config = RunConfig(data=DATA, model={"name": "hetegen"}, init_from=str(pretrained),
                       train={"batch_size": 256, "epochs": 2, "seed": 1, "progress": False})
    run, _, metrics = train_run(config, tmp_path / "ft", dataset=small_synthetic, log=lambda line: None)
    assert metrics["test"]["auc"] > 0.6
    reloaded = load_run(tmp_path / "ft")
    assert reloaded.config.model["embedding_dim"] == 32 and reloaded.config.init_from == str(pretrained)
    test = small_synthetic.splits["test"]
    np.testing.assert_array_equal(predict_split(run.model, test), predict_split(reloaded.model, test))
    everything = torch.ones(len(test), len(test.tokens), dtype=torch.bool)  # `drop` works too
    assert np.ptp(predict_split(reloaded.model, test, drop=everything)) < 1e-5


def test_embedding_transfer_copies_tables_and_can_freeze_them(pretrained, small_synthetic, tmp_path):
    _, _, net = load_pretrained(pretrained)
    config = RunConfig(data=DATA, model={"name": "dcnv2", "embedding_dim": 32, "hidden_units": [16]},
                       init_from=str(pretrained), freeze_embeddings=True,
                       train={"batch_size": 256, "epochs": 1, "seed": 1, "progress": False})
    run, _, _ = train_run(config, tmp_path / "emb", dataset=small_synthetic, log=lambda line: None)
    for name, table in run.model.embedding.tables.items():
        assert torch.equal(table.weight, net.denoiser.embedding.tables[name].weight)  # frozen
    wrong = config.model_copy(update={"model": {"name": "dnn", "embedding_dim": 10}})
    with pytest.raises(ConfigError, match="embedding_dim"):
        train_run(wrong, tmp_path / "wrong", dataset=small_synthetic, log=lambda line: None)
    conflict = config.model_copy(update={"model": {"name": "hetegen", "layers": 5}})
    with pytest.raises(ConfigError, match="model.layers"):
        train_run(conflict, tmp_path / "conflict", dataset=small_synthetic, log=lambda line: None)


def test_cli_pretrain_then_train_init_from(tmp_path):
    import yaml
    (tmp_path / "pre.yaml").write_text(yaml.safe_dump({
        "data": DATA.model_dump(), "pretrain": {"epochs": 1, "batch_size": 512}, "output_dir": str(tmp_path)}))
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump({
        "data": DATA.model_dump(), "model": {"name": "hetegen"},
        "train": {"epochs": 1, "batch_size": 512, "progress": False}, "output_dir": str(tmp_path)}))
    runner = CliRunner()
    first = runner.invoke(app, ["pretrain", str(tmp_path / "pre.yaml"), "--output", str(tmp_path / "pre")])
    assert first.exit_code == 0, first.output
    assert "label" in first.output and "final weight" in first.output
    second = runner.invoke(app, ["train", str(tmp_path / "ft.yaml"), "--init-from", str(tmp_path / "pre")])
    assert second.exit_code == 0, second.output
    assert "initialised from" in second.output


def test_neutral_mask_gives_dropped_fields_the_mask_state_on_hetegen_only(small_synthetic):
    from genctr.models import build_model
    from genctr.nn.embedding import set_neutral_mode

    fields = field_infos(small_synthetic.encoder)
    model = build_model("hetegen", fields, {"embedding_dim": 16, "heads": 2, "layers": 1}).eval()
    batch = batch_of(small_synthetic.splits["test"], slice(0, 32))
    names = [f.name for f in fields]
    drop = torch.zeros(32, len(fields), dtype=torch.bool)
    drop[::2, names.index("user_id")] = True
    drop[1::2, names.index("hist_items")] = True
    with torch.no_grad():
        neutral = model(batch, drop)
        set_neutral_mode(model, "mask")
        masked = model(batch, drop)
        expected = Masks.label_only(32, len(fields), model.denoiser.sequences)
        expected.fields[:, :-1] |= drop
        history = batch.tokens["hist_items"] != 0
        expected.positions["hist_items"] = drop[:, names.index("hist_items")].unsqueeze(1) & history
        by_hand = model.label_head(model.denoiser(batch, expected, log_difficulty=model.log_difficulty)[
            :, model.denoiser.label_token])
        assert torch.allclose(masked, by_hand[:, 1] - by_hand[:, 0], atol=1e-6)
        assert not torch.allclose(masked, neutral)
        assert torch.equal(model(batch), model(batch, torch.zeros_like(drop)))  # nothing dropped: plain
    dnn = build_model("dnn", fields, {"hidden_units": [8]})
    with pytest.raises(ConfigError, match="neutral: mask"):
        set_neutral_mode(dnn, "mask")


# ----------------------------------------------------- any backbone as the denoiser (issue 17)
BACKBONE = {"backbone": "dcnv2", "backbone_options": {"embedding_dim": 8, "hidden_units": [32],
                                                      "cross_layers": 1, "batch_norm": True}}


@pytest.mark.parametrize("objective", ["mfp", "rfd"])
def test_a_backbone_pretrains_balanced_per_field_and_transfers_whole(objective, small_synthetic, tmp_path):
    from genctr.models import build_model
    from genctr.pretrain.transfer import pretrained_model_options, transfer_pretrained

    config = PretrainConfig(data=DATA, pretrain={
        "epochs": 1, "batch_size": 256, "log_every": 2, "objective": objective, "denoiser": BACKBONE,
        "balancer": {"name": "self_balancing"}, "heads": {"sampled_above": 100}})
    folder, net, history = pretrain_run(config, tmp_path / objective, dataset=small_synthetic,
                                        log=lambda line: None)
    losses = history[-1]["field_loss"]
    assert set(losses) == {f.name for f in net.fields} and all(np.isfinite(list(losses.values())))
    assert "label" not in losses  # the label is never an input or a target
    assert net.balancer.log_difficulty.abs().sum() > 0
    text = (folder / "fields.md").read_text()
    assert ("replaced?" in text) == (objective == "rfd")
    # full transfer: a fresh DCNv2 of the same shape receives every pre-trained tensor
    fine = RunConfig(data=DATA, model={"name": "dcnv2"}, init_from=str(folder),
                     train={"batch_size": 256, "epochs": 1, "seed": 1, "progress": False})
    options = pretrained_model_options(fine.model, folder)
    assert options["hidden_units"] == [32] and options["embedding_dim"] == 8
    model = build_model("dcnv2", field_infos(small_synthetic.encoder), {k: v for k, v in options.items() if k != "name"})
    moved = transfer_pretrained(model, folder, small_synthetic.encoder)
    _, _, reloaded = load_pretrained(folder)
    pre = reloaded.backbone.state_dict()
    for key, value in model.state_dict().items():
        if "running" in key or "num_batches" in key:
            continue
        assert torch.equal(value, pre[key]), key
    assert "dcnv2" in moved[0]
    run, _, metrics = train_run(fine, tmp_path / f"ft-{objective}", dataset=small_synthetic,
                                log=lambda line: None)
    assert metrics["test"]["auc"] > 0.6 and run.config.model["hidden_units"] == [32]


def test_replaced_field_detection_replaces_only_chosen_fields(small_synthetic):
    from genctr.pretrain.backbone import replace_fields

    fields = field_infos(small_synthetic.encoder)
    batch = batch_of(small_synthetic.splits["train"], slice(0, 200))
    torch.manual_seed(0)
    chosen = torch.rand(200, len(fields)) < 0.3
    replaced, changed = replace_fields(batch, chosen, fields)
    for i, info in enumerate(fields):
        before, after = batch.tokens[info.name], replaced.tokens[info.name]
        differs = (before != after) if before.dim() == 1 else (before != after).any(dim=1)
        assert not differs[~chosen[:, i]].any()  # untouched where not chosen
        if info.name in batch.values:  # a numeric field: its value may change within one bin
            assert not (differs & ~changed[:, i]).any()
        else:
            assert torch.equal(differs, changed[:, i])
    assert changed.any() and not (changed & ~chosen).any()


@pytest.mark.parametrize("denoiser, objective, message", [
    ({"backbone": "fm"}, "mfp", "cannot denoise"),
    ({"backbone": "dnn", "layers": 3}, "mfp", "apply to the transformer denoiser only"),
    ({"backbone": "transformer"}, "rfd", "needs a model backbone"),
    ({"backbone": "dnn", "backbone_options": {"hidden_unitz": [3]}}, "mfp", "hidden_unitz"),
])
def test_denoiser_options_are_checked(denoiser, objective, message, small_synthetic):
    with pytest.raises((ConfigError, ValueError), match=message):
        options = PretrainOptions.model_validate({"denoiser": denoiser, "objective": objective})
        build_network(field_infos(small_synthetic.encoder), options)


def test_pretraining_resumes_after_a_kill_to_the_same_weights(small_synthetic, tmp_path, monkeypatch):
    import genctr.pretrain.loop as loop

    config = PretrainConfig(data=DATA, pretrain={
        "epochs": 3, "batch_size": 512, "log_every": 3, "denoiser": BACKBONE,
        "balancer": {"name": "self_balancing"},
        "heads": {"sampled_above": 100}})
    _, whole, history = pretrain_run(config, tmp_path / "whole", dataset=small_synthetic, log=lambda line: None)
    original = loop.iterate_batches
    calls = {"epochs": 0}

    def killed_in_epoch_2(*args, **kwargs):
        calls["epochs"] += 1
        if calls["epochs"] == 3:
            raise KeyboardInterrupt("simulated kill")
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, "iterate_batches", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        pretrain_run(config, tmp_path / "killed", dataset=small_synthetic, log=lambda line: None)
    monkeypatch.setattr(loop, "iterate_batches", original)
    _, resumed, again = pretrain_run(config, tmp_path / "killed", dataset=small_synthetic,
                                     log=lambda line: None, resume=True)
    for (key, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), key
    assert [h["field_loss"] for h in again] == [h["field_loss"] for h in history]
    trajectory = (tmp_path / "killed" / "trajectory.jsonl").read_text()
    assert trajectory == (tmp_path / "whole" / "trajectory.jsonl").read_text()
    changed = config.model_copy(update={"pretrain": config.pretrain.model_copy(update={"learning_rate": 0.01})})
    with pytest.raises(ConfigError, match="pretrain.learning_rate"):
        pretrain_run(changed, tmp_path / "killed", dataset=small_synthetic, log=lambda line: None, resume=True)


def test_transfer_auto_freezes_tables_when_labels_are_scarce_and_records_say_what_ran(small_synthetic, tmp_path):
    from genctr.experiment import transfer_label
    from genctr.pretrain.transfer import AUTO_FROZEN_BELOW, resolve_transfer

    assert resolve_transfer("auto", AUTO_FROZEN_BELOW - 1) == "frozen_embedding"
    assert resolve_transfer("auto", AUTO_FROZEN_BELOW) == "full"
    assert resolve_transfer("embedding", 10) == "embedding"
    config = PretrainConfig(data=DATA, pretrain={"epochs": 1, "batch_size": 256, "denoiser": BACKBONE,
                                                 "heads": {"sampled_above": 100}})
    folder, net, _ = pretrain_run(config, tmp_path / "pre", dataset=small_synthetic, log=lambda line: None)
    lines = []
    fine = RunConfig(data=DATA, model={"name": "dcnv2"}, init_from=str(folder), transfer="auto",
                     train={"batch_size": 256, "epochs": 1, "seed": 1, "progress": False,
                            "label_fraction": 0.5})  # ~1,000 labelled rows: scarce
    run, _, _ = train_run(fine, tmp_path / "auto", dataset=small_synthetic, log=lines.append)
    assert any("transfer: auto -> frozen_embedding" in line for line in lines)
    assert run.config.transfer == "frozen_embedding" and run.config.model["hidden_units"] == [32]
    for name, table in run.model.embedding.tables.items():  # kept fixed, the body was trained
        assert torch.equal(table.weight, net.backbone.embedding.tables[name].weight), name
    assert load_run(tmp_path / "auto").config.transfer == "frozen_embedding"  # saved resolved
    assert transfer_label(run.config, "dcnv2") == "frozen_embedding"
    assert transfer_label(run.config.model_copy(update={"transfer": "full"}), "dcnv2") == "full"
    assert transfer_label(run.config.model_copy(update={"transfer": "full"}), "dnn") == "embedding"
    assert transfer_label(run.config.model_copy(update={"transfer": "full", "freeze_embeddings": True}),
                          "dcnv2") == "full+frozen_embedding"


def test_input_scaling_shrinks_hard_fields_while_pretraining_only(small_synthetic):
    options = PretrainOptions.model_validate({"denoiser": {**BACKBONE, "input_scaling": True},
                                              "heads": {"sampled_above": 100}})
    net = build_network(field_infos(small_synthetic.encoder), options)
    with torch.no_grad():
        net.balancer.log_difficulty[0] = 2.0  # field 0 is hard: its inputs enter at exp(-1)
    seen = {}
    original = net.backbone.embedding.forward

    def spy(batch, drop=None):
        seen["scale"] = net.backbone.embedding.input_scale.clone()
        seen["out"] = original(batch, drop)
        return seen["out"]

    net.backbone.embedding.forward = spy
    batch = batch_of(small_synthetic.splits["train"], slice(0, 64))
    net.losses(batch, net.masks(batch, torch.Generator().manual_seed(0)))
    assert seen["scale"][0].item() == pytest.approx(math.exp(-1)) and seen["scale"][1].item() == 1.0
    assert net.backbone.embedding.input_scale is None  # removed after the step
    net.backbone.embedding.forward = original
    assert "input_scale" not in str(list(net.state_dict()))
    with pytest.raises(ConfigError, match="input_scaling needs a learned difficulty"):
        build_network(field_infos(small_synthetic.encoder), PretrainOptions.model_validate(
            {"denoiser": {**BACKBONE, "input_scaling": True}, "balancer": {"name": "uniform"}}))
    with pytest.raises(ValueError, match="input_scaling applies to a model backbone"):
        PretrainOptions.model_validate({"denoiser": {"input_scaling": True}})


def test_hetegen_dnn_branch_adds_its_logit_and_full_transfer_leaves_it_fresh(pretrained, small_synthetic):
    from genctr.models import build_model
    from genctr.pretrain.transfer import pretrained_model_options, transfer_pretrained

    options = pretrained_model_options({"name": "hetegen", "dnn_units": [16]}, pretrained)
    model = build_model("hetegen", field_infos(small_synthetic.encoder),
                        {k: v for k, v in options.items() if k != "name"})
    before = {k: v.clone() for k, v in model.dnn.state_dict().items()}
    transfer_pretrained(model, pretrained, small_synthetic.encoder)
    assert all(torch.equal(v, before[k]) for k, v in model.dnn.state_dict().items())  # not pre-trained
    model.eval()
    batch = batch_of(small_synthetic.splits["test"], slice(0, 32))
    with torch.no_grad():
        with_branch = model(batch)
        deep = model.dnn(model.embedding(batch).flatten(1)).squeeze(-1)
        model.dnn = None
        without = model(batch)
    torch.testing.assert_close(with_branch, without + deep)
    assert deep.abs().max() > 0


def test_generative_uttsi_imputes_filtered_fields_from_the_denoiser(small_synthetic, tmp_path):
    from genctr.pretrain.imputer import imputer_for_run
    from genctr.runs import evaluate_run_inference
    from genctr.testtime.evaluate import frequency_index, make_inference
    from genctr.testtime.index import IndexOptions
    from genctr.testtime.inference import InferenceOptions

    config = PretrainConfig(data=DATA, pretrain={
        "epochs": 2, "batch_size": 256, "objective": "mfp", "denoiser": BACKBONE,
        "balancer": {"name": "self_balancing"}, "heads": {"sampled_above": 100}})
    folder, _, _ = pretrain_run(config, tmp_path / "pre", dataset=small_synthetic, log=lambda line: None)
    fine = RunConfig(data=DATA, model={"name": "dcnv2"}, init_from=str(folder),
                     train={"batch_size": 256, "epochs": 1, "seed": 1, "progress": False})
    run, _, _ = train_run(fine, tmp_path / "ft", dataset=small_synthetic, log=lambda line: None)
    imputer = imputer_for_run(run.config.init_from, run.encoder)
    batch = batch_of(small_synthetic.splits["test"], slice(0, 64))
    masked = torch.zeros(64, len(imputer.fields), dtype=torch.bool)
    user = [f.name for f in imputer.fields].index("user_id")
    masked[:, user] = True
    values, probabilities = imputer.impute(batch, masked, top_k=5)["user_id"]
    assert values.shape == (64, 5) and torch.allclose(probabilities.sum(1), torch.ones(64))
    assert (values > 1).all()  # never padding or out-of-vocabulary
    # the paths carry sampled values where the filter dropped a field, and nothing else changes
    options = InferenceOptions(strategy="uttsi", budget=2.0, impute="denoiser", impute_top_k=5)
    uttsi = make_inference(options, index=frequency_index(small_synthetic, IndexOptions(), run.folder),
                           imputer=imputer)
    path_batch, drop = uttsi._imputed_paths(batch, masked, 3, run.model)
    assert len(path_batch) == 192 and not drop[:, user].any()
    changed = path_batch.tokens["user_id"].view(3, 64)
    for row in range(64):
        assert set(changed[:, row].tolist()) <= set(values[row].tolist())
    assert torch.equal(path_batch.tokens["item_id"].view(3, 64)[1], batch.tokens["item_id"])
    result = evaluate_run_inference(run, small_synthetic, options, measure_latency=False)
    assert result["test"]["avg_cost"] == pytest.approx(2.0, rel=0.02) and 0.5 < result["test"]["auc"] <= 1
    scratch, _, _ = train_run(fine.model_copy(update={"init_from": None}), tmp_path / "scratch",
                              dataset=small_synthetic, log=lambda line: None)
    with pytest.raises(ConfigError, match="trained from scratch"):
        evaluate_run_inference(scratch, small_synthetic, options, measure_latency=False)


def test_oov_masking_trains_the_tables_oov_rows_that_transfer(small_synthetic):
    """mask: oov gives masked fields their OOV token, so the OOV rows (what an unseen value, a
    cold user's id, meets at fine-tuning and test) get gradients; the [MASK] vector gets none."""
    from genctr.data.batches import with_unknown
    from genctr.schema import OOV

    fields = field_infos(small_synthetic.encoder)
    batch = batch_of(small_synthetic.splits["train"], slice(0, 256))
    chosen = torch.rand(256, len(fields), generator=torch.Generator().manual_seed(0)) < 0.3
    unknown = with_unknown(batch, chosen, [f.name for f in fields])
    for i, info in enumerate(fields):
        before, after = batch.tokens[info.name], unknown.tokens[info.name]
        first = after if after.dim() == 1 else after[:, 0]
        assert torch.all(first[chosen[:, i]] == OOV)
        assert torch.equal(after[~chosen[:, i]], before[~chosen[:, i]])
        if after.dim() == 2:
            assert not after[chosen[:, i]][:, 1:].any()  # one item: OOV
    grads = {}
    for mask in ("neutral", "oov"):
        options = PretrainOptions.model_validate({"denoiser": {**BACKBONE, "mask": mask},
                                                  "heads": {"sampled_above": 100}})
        net = build_network(fields, options)
        loss, _, _ = net.losses(batch, net.masks(batch, torch.Generator().manual_seed(0)))
        loss.backward()
        table = next(f.name for f in fields if f.kind.name == "categorical")
        grads[mask] = (net.backbone.embedding.tables[table].weight.grad[OOV].abs().sum().item(),
                       net.backbone.embedding.learned_neutral.grad)
    assert grads["oov"][0] > 0 and grads["oov"][1] is None
    assert grads["neutral"][1] is not None
    with pytest.raises(ValueError, match="mask applies to a model backbone"):
        PretrainOptions.model_validate({"denoiser": {"mask": "oov"}})
    with pytest.raises(ConfigError, match="mask: oov masks fields"):
        build_network(fields, PretrainOptions.model_validate(
            {"denoiser": {**BACKBONE, "mask": "oov"}, "objective": "rfd"}))


def test_label_aware_backbone_pretraining_reads_only_the_labelled_fractions_labels(small_synthetic, tmp_path):
    """pretrain.label_fraction: the labels of the seeded fraction a fine-tuning with the same
    fraction and seed trains on are a target of the backbone's own output layer (weighed in the
    label slot), every other label is never read (flipping them changes nothing), and full
    transfer carries the pre-trained output layer, under the fine-tuning's own dropout."""
    from genctr.data.labelled import labelled_positions, labelled_rows, labels_held_back
    from genctr.data.store import EncodedDataset
    from genctr.models import build_model
    from genctr.pretrain.transfer import pretrained_model_options, transfer_pretrained

    train = small_synthetic.splits["train"]
    held = labels_held_back(train, 0.1, seed=3)
    known = np.isfinite(held.label)
    assert known.sum() == len(labelled_rows(train, 0.1, seed=3))
    assert np.array_equal(np.flatnonzero(known), labelled_positions(len(train), 0.1, 3))
    assert np.array_equal(held.label[known], labelled_rows(train, 0.1, seed=3).label)

    flipped_label = np.asarray(train.label).copy()
    flipped_label[~known] = 1 - flipped_label[~known]
    flipped = EncodedDataset(small_synthetic.name, small_synthetic.encoder,
                             {**small_synthetic.splits, "train": EncodedSplit(
                                 train.tokens, train.values, train.lengths, flipped_label,
                                 train.group, train.segments)})
    denoiser = {**BACKBONE, "backbone_options": {**BACKBONE["backbone_options"], "dropout": 0.1}}
    config = PretrainConfig(data=DATA, pretrain={
        "epochs": 1, "batch_size": 256, "seed": 3, "label_fraction": 0.1, "denoiser": denoiser,
        "balancer": {"name": "self_balancing"}, "heads": {"sampled_above": 100}})
    runs = {}
    for name, dataset in (("as_is", small_synthetic), ("flipped", flipped)):
        runs[name] = pretrain_run(config, tmp_path / name, dataset=dataset, log=lambda line: None)
    folder, net, history = runs["as_is"]
    assert np.isfinite(history[-1]["field_loss"]["label"])
    assert history[-1]["weight"]["label"] > 0
    for key, value in net.state_dict().items():
        assert torch.equal(value, runs["flipped"][1].state_dict()[key]), key
    # the fine-tuning may set its own dropout (it shapes no parameter), not from or to 0
    options = pretrained_model_options({"name": "dcnv2", "dropout": 0.5}, folder)
    assert options["dropout"] == 0.5 and options["hidden_units"] == [32]
    with pytest.raises(ConfigError, match="not from or to 0"):
        pretrained_model_options({"name": "dcnv2", "dropout": 0.0}, folder)
    model = build_model("dcnv2", field_infos(small_synthetic.encoder),
                        {k: v for k, v in options.items() if k != "name"})
    transfer_pretrained(model, folder, small_synthetic.encoder)
    pre = net.backbone.state_dict()
    assert all(torch.equal(value, pre[key]) for key, value in model.state_dict().items()
               if "running" not in key and "num_batches" not in key)
    assert any(key.startswith("head.") for key in pre)  # the output layer came along
    with pytest.raises(ConfigError, match="label_fraction is for model backbones"):
        build_network(field_infos(small_synthetic.encoder),
                      PretrainOptions.model_validate({"label_fraction": 0.1}))
