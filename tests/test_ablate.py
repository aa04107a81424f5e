"""`bonsai ablate`: the baseline and the cleaned run per seed, measured on the same records, compared
against the seeds' noise band. End to end on the shipped demo config (only the model cache, the data,
the steps and the decode length changed for the CPU), with planted contradictions excluded."""

import json
import subprocess
import sys

import pytest
import yaml
from conftest import LAUNCH_TIMEOUT_S, ROOT, subprocess_env, write_config, write_shards
from planted import varied_planted_set

from bonsai.data.checks import question_of
from bonsai.data.records import Where, in_eval_split, validate_record
from bonsai.data.textmetrics import normalise
from bonsai.evaluate.ab_report import compare_arms, noise_band, verdict

STEPS = 16


def test_noise_band_is_the_95_percent_interval_of_the_difference():
    # variances 0.0002 and 0.0008 (n = 2 each): pooled 0.0005, se = sqrt(2 * 0.0005 / 2) = 0.02236, t(2) 4.303
    assert noise_band([1.00, 1.02], [0.90, 0.94]) == pytest.approx(4.303 * 0.0223607, rel=1e-4)
    # n = 3: variances 1 and 1, se = sqrt(2 / 3), t(4) 2.776
    assert noise_band([1.0, 2.0, 3.0], [2.0, 3.0, 4.0]) == pytest.approx(2.776 * (2 / 3) ** 0.5, rel=1e-4)
    assert noise_band([1.0], [0.9]) is None


def test_verdict_knows_which_way_is_better():
    assert verdict("heldout_loss", -0.2, 0.05) == "better"
    assert verdict("gen/distinct_2", -0.2, 0.05) == "worse"
    assert verdict("heldout_loss", 0.01, 0.05) == "within noise"
    assert verdict("gen/length", 3.0, 1.0) == "higher"
    assert verdict("heldout_loss", -0.2, None) == "one seed: no band"


def test_compare_arms_uses_only_metrics_both_arms_have():
    rows = compare_arms({"baseline": [{"heldout_loss": 2.0, "contested_loss": 3.0}, {"heldout_loss": 2.2}],
                         "cleaned": [{"heldout_loss": 1.0}, {"heldout_loss": 1.2}]})
    assert [r["metric"] for r in rows] == ["heldout_loss"]
    assert rows[0]["difference"] == pytest.approx(-1.0) and rows[0]["verdict"] == "better"


@pytest.fixture(scope="module")
def planted_ablation(tmp_path_factory, model_cache):
    """The demo config on the sample plus planted contradictions, ablated without them (2 seeds)."""
    root = tmp_path_factory.mktemp("ablate")
    records, kinds = varied_planted_set(seed=0, ratio=0.05)
    records = [r for r in records if kinds.get(r["id"], "contradiction") in ("contradiction", "translation_conflict")]
    data = write_shards(root / "data", records)
    excluded = root / "excluded.txt"
    excluded.write_text("".join(f"{i}\n" for i in kinds if kinds[i] in ("contradiction", "translation_conflict")))
    cfg = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    cfg["model"]["cache_dir"] = str(model_cache)
    cfg["data"]["path"] = str(data)
    cfg["train"].update(output_dir=str(root / "run"), max_steps=STEPS, checkpoint_every=STEPS)
    cfg["eval"].update(every_steps=0, probe_every=0, decode={"max_new_tokens": 16})
    config = write_config(root / "demo.yaml", cfg)
    command = [sys.executable, "-m", "bonsai.cli", "ablate", str(config), "--exclude", str(excluded),
               "--seeds", "2", "--out", str(root / "ab"), "--generate-limit", "8"]

    def run():
        return subprocess.run(command, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                              timeout=4 * LAUNCH_TIMEOUT_S)

    return root, records, kinds, run(), run


def test_ablate_trains_both_arms_per_seed_and_compares_them(planted_ablation):
    root, records, kinds, proc, _ = planted_ablation
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((root / "ab" / "ablate.json").read_text())
    assert (root / "ab" / "ablate.png").stat().st_size > 10_000
    assert summary["seeds"] == [42, 43] and len(summary["runs"]) == 4
    for run in summary["runs"]:
        resolved = yaml.safe_load((root / "ab" / f"{run['arm']}-seed{run['seed']}" / "config.yaml").read_text())
        assert resolved["train"]["seed"] == run["seed"]
        assert bool(resolved["data"]["exclude"]) == (run["arm"] == "cleaned")
    # The same records for both arms: the held-out split without the excluded, and the kept records the
    # excluded ones contradicted (those in the training split).
    planted = {i for i, kind in kinds.items() if kind in ("contradiction", "translation_conflict")}
    # A held-out answer that a trained planted record gives was seen by the baseline only: left out too.
    trained_plants = [r for r in records if r["id"] in planted and not in_eval_split(r["id"], 0.05)]
    given = {normalise(r["output"]) for r in trained_plants}
    heldout = [r for r in records if in_eval_split(r["id"], 0.05) and r["id"] not in planted]
    leaked = [r["id"] for r in heldout if normalise(r["output"]) in given]
    asked = {question_of(validate_record(r, Where("test", 1))) for r in trained_plants}
    contested = [r for r in records if r["id"] not in planted and not in_eval_split(r["id"], 0.05)
                 and question_of(validate_record(r, Where("test", 1))) in asked]
    assert leaked and summary["heldout_left_out"] == leaked  # this set holds one ("Until 1868.")
    assert summary["heldout"] == len(heldout) - len(leaked)
    assert summary["contested"] == len(contested) > 0
    assert summary["excluded"] == len(planted)
    metrics = {row["metric"]: row for row in summary["comparison"]}
    for name in ("heldout_loss", "contested_loss", "curve/loss_step_change_std", "curve/events",
                 "gen/repeated_3gram_ratio", "gen/distinct_2", "gen/chrf"):
        assert metrics[name]["noise_band"] is not None, name
        assert len(metrics[name]["seeds"]["baseline"]) == 2
    assert "heldout_loss_by_category/open_qa" in metrics and "heldout_loss_by_language/ja" in metrics
    # Bits per byte beside the loss per token, and the answers' stop and language-switch rates, in the A/B.
    assert {"heldout_bits_per_byte", "heldout_bits_per_byte_by_language/ja", "contested_bits_per_byte",
            "gen/eos_rate", "gen/language_switch_rate"} <= set(metrics)
    assert "heldout_bits_per_byte_by_language/zh" in proc.stdout
    assert "contested_loss" in proc.stdout and "verdict" in proc.stdout


def test_ablate_again_reuses_the_finished_runs(planted_ablation):
    root, _, _, first, run = planted_ablation
    assert first.returncode == 0, first.stderr[-3000:]
    again = run()
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("already finished") == 4
    assert json.loads((root / "ab" / "ablate.json").read_text())["comparison"]


def test_ablate_refuses_a_config_without_held_out_records(planted_ablation, tmp_path):
    root, *_ = planted_ablation
    cfg = yaml.safe_load((root / "demo.yaml").read_text())
    cfg["data"]["eval_fraction"] = 0.0
    config = write_config(tmp_path / "no_eval.yaml", cfg)
    proc = subprocess.run([sys.executable, "-m", "bonsai.cli", "ablate", str(config), "--exclude",
                           str(root / "excluded.txt")], cwd=ROOT, env=subprocess_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "data.eval_fraction" in proc.stderr and "Traceback" not in proc.stderr


def test_ablate_refuses_a_baseline_trained_on_another_config(planted_ablation):
    root, *_ = planted_ablation
    proc = subprocess.run([sys.executable, "-m", "bonsai.cli", "ablate", str(root / "demo.yaml"), "train.lr=1e-4",
                           "--exclude", str(root / "excluded.txt"), "--baseline", str(root / "ab" / "baseline-seed42"),
                           "--out", str(root / "other")], cwd=ROOT, env=subprocess_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "train.lr" in proc.stderr and "Traceback" not in proc.stderr
    assert not (root / "other").exists()  # refused before any training
