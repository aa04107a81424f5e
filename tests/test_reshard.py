"""Resuming under another strategy on as many processes, end to end through the shipped launch files:
the checkpoint is resharded (bonsai.train.reshard) and the steps after the resume match the source
strategy's own resume. Between them the cases put a checkpoint into every kind of target: DDP,
ZeRO-1/2 (tensor fragments linked lazily) and ZeRO-3 (partitioned, here with offload: DeepSpeedCPUAdam),
from DDP and from ZeRO-3 sources, full and LoRA. Resharding on another number of processes is in
test_resize.py (ZeRO-3 on 2 -> DDP on 1) and test_slurm.py (2 nodes -> 1)."""

from __future__ import annotations

import shutil

import pytest

from conftest import base_config, losses, run_train, write_config
from test_resize import LAYOUT
from test_zero import LOSS_TOL


@pytest.mark.parametrize("finetune, source, targets", [("full", "ddp", ("zero2",)),
                                                       ("lora", "zero3", ("ddp", "zero3_offload"))])
def test_a_checkpoint_resharded_to_another_strategy_trains_on_as_under_its_own(tmp_path, model_cache, finetune,
                                                                               source, targets):
    """Same processes, same data positions, fp32: the steps after the resume differ from the source
    strategy's own resume only by the order gradients are summed (test_zero.LOSS_TOL). A lost moment,
    step count or learning rate moves the second step after the resume by >1e-4."""
    run_dir = tmp_path / "run"
    cfg = base_config(run_dir, model_cache)
    cfg["train"].update(max_steps=3, checkpoint_every=3, warmup_steps=1, micro_batch_size=2,
                        gradient_accumulation_steps=2, weight_decay=0.1, max_grad_norm=1.0)
    if finetune == "lora":
        cfg["model"].update(finetune="lora", lora={"r": 4, "alpha": 8, "dropout": 0.0})
    cfg["eval"] = {"probes": None}
    cfg["logging"]["wandb"] = {"mode": "disabled"}
    config = write_config(tmp_path / "c.yaml", cfg)
    run_train(config, nproc=2, launch=source)
    shutil.copytree(run_dir, tmp_path / "saved")

    def resume(launch: str) -> tuple[dict[int, float], str]:
        shutil.rmtree(run_dir)
        shutil.copytree(tmp_path / "saved", run_dir)
        done = run_train(config, ["train.max_steps=6"], nproc=2, launch=launch)
        return losses(run_dir), done.stdout + done.stderr

    reference, said = resume(source)
    assert "resharded step_" not in said
    for target in targets:
        resumed, said = resume(target)
        assert (f"from {LAYOUT[source]} on 2 process(es) to {LAYOUT[target]} on 2 process(es)") in said, said[-3000:]
        assert sorted(resumed) == list(range(1, 7))
        for step in range(4, 7):
            assert abs(resumed[step] - reference[step]) < LOSS_TOL, (target, step, resumed[step], reference[step])
        assert not list(run_dir.glob(".reshard-*")), "the conversion's scratch directory was left behind"
