"""The suspect ranking on data nobody tuned it to: bench/sets/heldout_c (written by an independent writer,
never used to tune the report; bench/sets/README.md), trained with the README's recipe (configs/demo.yaml,
200 steps) and ranked by `bonsai report`. Issue 25's targets: recall >= 0.8 at k = number planted, no kind
below 0.5, at most 20 % clean records in the top k. The ranking does not reach the first two yet
(the third is: 3 of 23 clean here; bench/RESULTS.md): that test is expected to fail, strictly, so that
meeting them turns it red until the mark goes; the other holds the ranking to what it reached in its
second round."""

import json
import subprocess
import sys
from collections import Counter

import pytest
import yaml

from conftest import ROOT, run_train, subprocess_env, write_config

HELDOUT = ROOT / "bench" / "sets" / "heldout_c"
# heldout_c ranked by the report of 2026-12-03's second round (bench/RESULTS.md): 13 of 23 in the top 23,
# 3 of them clean (the first round: 12 and 5).
REACHED = {"recall": 13 / 23, "clean": 3 / 23, "kinds": {"truncated", "echo_or_loop", "wrong_language"}}


@pytest.fixture(scope="module")
def heldout_ranking(tmp_path_factory, model_cache):
    tmp = tmp_path_factory.mktemp("heldout_c")
    cfg = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    cfg["data"].update(path=str(HELDOUT / "data.jsonl"), on_bad_record="skip")
    cfg["train"].update(output_dir=str(tmp / "run"), max_steps=200)
    cfg["model"]["cache_dir"] = str(model_cache)
    cfg["logging"] = {"wandb": {"mode": "disabled"}, "progress_bar": False}
    run_train(write_config(tmp / "c.yaml", cfg))
    report = subprocess.run([sys.executable, "-m", "bonsai.cli", "report", str(tmp / "run")], cwd=ROOT,
                            env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]

    from bonsai.observe.report import find_suspects

    kinds = {i: v["kind"] for i, v in json.loads((HELDOUT / "labels.json").read_text())["planted"].items()}
    top = [s["id"] for s in find_suspects(tmp / "run")][: len(kinds)]
    top_of_report = [s["id"] for s in json.loads((tmp / "run" / "report.json").read_text())["suspects"]]
    assert top_of_report == top[: len(top_of_report)]  # report.json lists the same ranking
    found = Counter(kinds[i] for i in top if i in kinds)
    recall = {kind: found[kind] / n for kind, n in Counter(kinds.values()).items()}
    figures = {"recall": sum(found.values()) / len(kinds), "per_kind": recall,
               "clean": sum(i not in kinds for i in top) / len(kinds)}
    print(f"heldout_c: {figures}")
    return figures


def test_the_ranking_keeps_what_it_reached_on_a_held_out_set(heldout_ranking):
    assert heldout_ranking["clean"] <= REACHED["clean"] + 1e-9
    assert heldout_ranking["recall"] >= REACHED["recall"] - 1e-9
    assert {k for k, r in heldout_ranking["per_kind"].items() if r >= 0.5} >= REACHED["kinds"]


@pytest.mark.xfail(strict=True, reason="issue 25's recall targets are not reached yet (bench/RESULTS.md)")
def test_the_ranking_meets_the_issue_targets_on_a_held_out_set(heldout_ranking):
    assert heldout_ranking["recall"] >= 0.8
    assert min(heldout_ranking["per_kind"].values()) >= 0.5
    assert heldout_ranking["clean"] <= 0.2
