"""The experiment runner and the report, end to end on tiny synthetic data."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from genctr.config import load_run_config
from genctr.experiment import load_experiment
from genctr.schema import load_schema

EXPERIMENT = {
    "name": "tiny",
    "results": "bench/results/synthetic.jsonl",
    "output_dir": "runs",
    "tasks": {"synthetic-small": {"source": "synthetic", "cache_dir": "cache",
                                  "options": {"rows": 3000, "users": 60, "items": 40}}},
    "models": {"dnn": {"hidden_units": [16]}, "fm": {}},
    "seeds": [1, 2],
    "train": {"batch_size": 256, "epochs": 2},
}


def genctr(*args, cwd):
    return subprocess.run([sys.executable, "-m", "genctr", *args], cwd=cwd, capture_output=True,
                          text=True)


def test_matrix_runs_records_skips_and_reports(tmp_path):
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(EXPERIMENT))
    typo = genctr("run", "exp.yaml", "--seed", "3", cwd=tmp_path)
    assert typo.returncode == 2 and "--seed 3: not in the experiment (it has 1, 2)" in typo.stdout
    part = genctr("run", "exp.yaml", "--model", "fm", "--seed", "2", cwd=tmp_path)
    assert part.returncode == 0, part.stdout + part.stderr
    records = [json.loads(x) for x in (tmp_path / "bench/results/synthetic.jsonl").read_text().splitlines()]
    assert [(r["model"], r["seed"]) for r in records] == [("fm", 2)]
    first = genctr("run", "exp.yaml", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.count("already recorded") == 1
    records = [json.loads(x) for x in (tmp_path / "bench/results/synthetic.jsonl").read_text().splitlines()]
    assert sorted((r["model"], r["seed"]) for r in records) == [("dnn", 1), ("dnn", 2), ("fm", 1), ("fm", 2)]
    for r in records:
        assert 0.5 < r["test_auc"] < 1 and r["train_samples_per_s"] > 0 and r["peak_rss_mb"] > 0
        assert set(r["segments"]) == {"cold", "tail", "warm"}
        assert r["inference"] == "plain" and r["pretrain"] == "none"
    again = genctr("run", "exp.yaml", cwd=tmp_path)
    assert again.stdout.count("already recorded") == 4
    assert len((tmp_path / "bench/results/synthetic.jsonl").read_text().splitlines()) == 4
    report = genctr("report", "--benchmarks-dir", "bench", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    text = (tmp_path / "bench" / "RESULTS.md").read_text()
    assert "## synthetic-small" in text and "| fm | 1,2 |" in text and "p=" in text
    assert (tmp_path / "bench" / "plots" / "synthetic-auc.png").is_file()
    # A second records file on the same task gets plots of its own, not the first file's.
    (tmp_path / "bench/results/synthetic-rerun.jsonl").write_text(
        (tmp_path / "bench/results/synthetic.jsonl").read_text())
    assert genctr("report", "--benchmarks-dir", "bench", cwd=tmp_path).returncode == 0
    text = (tmp_path / "bench" / "RESULTS.md").read_text()
    assert "(plots/synthetic-auc.png)" in text and "(plots/synthetic-rerun-auc.png)" in text
    assert (tmp_path / "bench" / "plots" / "synthetic-rerun-auc.png").is_file()


def test_unknown_experiment_key_is_reported(tmp_path):
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump({**EXPERIMENT, "seedz": [1]}))
    result = genctr("run", "exp.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown key 'seedz'" in result.stdout and "Traceback" not in result.stdout + result.stderr


def test_unknown_model_option_is_reported(tmp_path):
    bad = {**EXPERIMENT, "models": {"dnn": {"hiden_units": [8]}}}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(bad))
    result = genctr("run", "exp.yaml", cwd=tmp_path)
    assert result.returncode == 2 and "hiden_units" in result.stdout


def test_inference_matrix_records_each_strategy_once_and_reports(tmp_path):
    experiment = {**EXPERIMENT, "models": {"dnn": {"hidden_units": [16], "dropout": 0.1}},
                  "latency": False,
                  "inference": {"plain": {"strategy": "plain"},
                                "temperature": {"strategy": "temperature"},
                                "matt": {"strategy": "matt", "paths": [2, 3]},
                                "mc-dropout": {"strategy": "mcdropout", "paths": 2},
                                "uttsi": {"strategy": "uttsi", "budget": 1.5, "max_paths": 3},
                                "ensemble": {"strategy": "ensemble", "members": 2},
                                "selective": {"strategy": "selective_ensemble", "budget": 1.5}}}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(experiment))
    first = genctr("run", "exp.yaml", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    records = [json.loads(x) for x in (tmp_path / "bench/results/synthetic.jsonl").read_text().splitlines()]
    evaluated = sorted((r["inference"], r["variant"], r["seed"]) for r in records if "variant" in r)
    assert evaluated == sorted((inference, variant, seed) for seed in (1, 2) for inference, variant in [
        ("plain", "plain"), ("plain", "temperature"), ("matt@2", "matt"), ("matt@3", "matt"),
        ("matt@2", "mc-dropout"), ("uttsi@1.5", "uttsi"), ("ensemble@2", "ensemble"),
        ("ensemble@1.5", "selective")])
    for r in records:
        if "variant" in r:
            assert r["avg_cost"] >= 1 and 0.5 < r["test_auc"] < 1
            assert r["inference"] == "plain" or r["inference"].startswith(("matt@", "uttsi@", "ensemble@"))
    ensembles = {r["seed"]: r for r in records if r.get("variant") == "ensemble"}
    assert ensembles[1]["members"] == [ensembles[2]["run_dir"]] and ensembles[1]["avg_cost"] == 2
    assert [r["valid_avg_cost"] for r in records if r.get("variant") == "uttsi"] == pytest.approx([1.5, 1.5], rel=0.02)
    again = genctr("run", "exp.yaml", cwd=tmp_path)
    assert again.returncode == 0 and len((tmp_path / "bench/results/synthetic.jsonl").read_text().splitlines()) == len(records)
    report = genctr("report", "--benchmarks-dir", "bench", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    text = (tmp_path / "bench" / "RESULTS.md").read_text()
    assert "## synthetic-small: test-time inference" in text and "| uttsi@1.5 | uttsi | 1,2 |" in text
    assert (tmp_path / "bench" / "plots" / "synthetic-gain.png").is_file()


def test_pretrain_then_finetune_matrix(tmp_path):
    experiment = {**EXPERIMENT, "seeds": [1],
                  "models": {"dnn": {"hidden_units": [16]},
                             "hetegen": {"embedding_dim": 16, "heads": 2, "layers": 1},
                             "dnn-emb": {"name": "dnn", "embedding_dim": 16, "hidden_units": [16]}},
                  "pretrain": {"uniform": {"epochs": 1, "batch_size": 512, "balancer": {"name": "uniform"},
                                           "denoiser": {"d_model": 16, "heads": 2, "layers": 1, "guidance": "none"}},
                               "self_balancing": {"epochs": 1, "batch_size": 512,
                                                  "denoiser": {"d_model": 16, "heads": 2, "layers": 1}}},
                  "finetune": {"hetegen": {"pretrain": ["uniform", "self_balancing"]},
                               "dnn-emb": {"pretrain": ["self_balancing"], "freeze_embeddings": True}}}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(experiment))
    first = genctr("run", "exp.yaml", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    records = [json.loads(x) for x in (tmp_path / "bench/results/synthetic.jsonl").read_text().splitlines()]
    cells = sorted((r["model"], r["pretrain"]) for r in records)
    assert cells == [("dnn", "none"), ("dnn-emb", "self_balancing"), ("hetegen", "self_balancing"),
                     ("hetegen", "uniform")]
    for r in records:
        assert (r["pretrain"] == "none") == ("pretrain_epoch_seconds" not in r)
        assert r.get("pretrain_epoch_seconds", 1) > 0 and 0.5 < r["test_auc"] < 1
        if r["pretrain"] != "none":  # the pre-training's final field weights travel with the record
            assert set(r["pretrain_field_weights"]) >= {"user_id", "label"}
    assert (tmp_path / "runs/tiny/synthetic-small/pretrain-self_balancing/seed1/fields.md").is_file()
    again = genctr("run", "exp.yaml", cwd=tmp_path)
    assert again.returncode == 0 and "pre-train" not in again.stdout
    assert len((tmp_path / "bench/results/synthetic.jsonl").read_text().splitlines()) == 4
    # a second experiment fine-tunes from the first one's pre-training runs (scarce labels)
    scarce = {**experiment, "name": "scarce", "results": "bench/results/scarce.jsonl",
              "pretrain_experiment": "tiny", "train": {**experiment["train"], "label_fraction": 0.3},
              "models": {"dnn-emb": experiment["models"]["dnn-emb"]},
              "finetune": {"dnn-emb": {"pretrain": ["self_balancing"], "transfer": "frozen_embedding"}}}
    (tmp_path / "scarce.yaml").write_text(yaml.safe_dump(scarce))
    reused = genctr("run", "scarce.yaml", cwd=tmp_path)
    assert reused.returncode == 0 and "pre-train" not in reused.stdout, reused.stdout + reused.stderr
    [record] = [json.loads(x) for x in (tmp_path / "bench/results/scarce.jsonl").read_text().splitlines()]
    assert record["transfer"] == "frozen_embedding" and record["config"]["train"]["label_fraction"] == 0.3
    assert record["pretrain_run"].endswith("runs/tiny/synthetic-small/pretrain-self_balancing/seed1")


def test_finetune_must_name_a_known_pretraining(tmp_path):
    bad = {**EXPERIMENT, "finetune": {"dnn": {"pretrain": ["nope"]}}}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(bad))
    result = genctr("run", "exp.yaml", cwd=tmp_path)
    assert result.returncode == 2 and "no pre-training 'nope'" in result.stdout


def test_commit_is_dirty_only_for_code_changes(tmp_path):
    from genctr.provenance import git_commit

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "task.jsonl").write_text("{}\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    clean = git_commit(tmp_path)
    assert len(clean) == 12 and not clean.endswith("+dirty")
    (tmp_path / "benchmarks" / "results" / "task.jsonl").write_text("{}\n{}\n")  # a record appended
    assert git_commit(tmp_path) == clean
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == clean + "+dirty"


CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    content = yaml.safe_load(path.read_text())
    if "tasks" in content:  # an experiment matrix
        assert load_experiment(path).cells()
    elif "fields" in content:  # a schema (the example's)
        assert load_schema(path).field_names
    else:
        config = load_run_config(path)
        schema_file = config.data.options.get("schema_file")
        assert schema_file is None or Path(schema_file).is_file()


@pytest.mark.parametrize("testtime, trained", [
    ("bench-frappe-hetegen-testtime.yaml", "bench-frappe-pretrain.yaml"),
    ("bench-ml1m-hetegen-testtime.yaml", "bench-ml1m-pretrain.yaml"),
    ("bench-frappe-testtime.yaml", "bench-frappe.yaml"),
    ("bench-ml1m-testtime.yaml", "bench-ml1m.yaml")])
def test_testtime_configs_reuse_the_trained_runs(testtime, trained):
    """A test-time experiment must describe its cells exactly as the experiment that trained them
    (same run folder and options), or it would retrain them."""
    folder = CONFIGS[0].parent
    inference, training = load_experiment(folder / testtime), load_experiment(folder / trained)
    trained_cells = set(training.cells())
    for cell in inference.cells():
        assert cell in trained_cells
        assert inference.run_config(*cell) == training.run_config(*cell)


def test_pretrain_segment_cell_gives_the_paired_difference_to_scratch():
    from genctr.report import _segment_cell

    def run(seed, cold):
        return {"seed": seed, "segments": {"cold": {"auc": cold}}}

    scratch = {1: run(1, 0.70), 2: run(2, 0.72)}
    assert _segment_cell([run(1, 0.71), run(2, 0.75)], scratch, "cold") == "0.7300 (+0.0200)"
    assert _segment_cell([run(1, 0.71)], {}, "cold") == "0.7100"
    assert _segment_cell([run(1, 0.71)], scratch, "tail") == ""


def test_label_scarce_section_picks_the_tuned_scratch_by_valid_auc_and_pairs_by_seed():
    from genctr.report import label_scarce_section

    def record(model, seed, valid, test, pretrain="none", transfer=None, fraction=0.01):
        r = {"task": "t", "model": model, "seed": seed, "pretrain": pretrain, "valid_auc": valid,
             "test_auc": test, "test_logloss": 0.6, "config": {"train": {"label_fraction": fraction}},
             "segments": {"cold": {"auc": test - 0.01}}}
        return r | ({"transfer": transfer} if transfer else {})

    records = []
    for seed, noise in zip((1, 2, 3), (0.001, -0.002, 0.0005)):
        records += [record("base", seed, 0.650, 0.651 + noise),
                    record("tuned", seed, 0.660, 0.662 + noise),  # best valid: the baseline
                    record("frozen", seed, 0.0, 0.682 + noise + seed * 1e-4, "uniform", "frozen_embedding"),
                    record("base", seed, 0.7, 0.7 + noise, fraction=0.1)]
    text = label_scarce_section("t", records)
    assert "Label fraction 0.01:" in text and "Label fraction 0.1:" in text
    assert "| tuned ✓ | none | 1,2,3 |" in text and "| base | none |" in text
    frozen = next(line for line in text.splitlines() if line.startswith("| frozen + uniform"))
    assert "frozen_embedding" in frozen and "+0.0202 (p=" in frozen and "0.6720 (+0.0202)" in frozen
    base = next(line for line in text.splitlines() if line.startswith("| base |"))
    assert "-0.0110 (p=0)" in base  # the same difference on every seed
