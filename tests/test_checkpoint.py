"""Checkpoints: a crash mid-save leaves the previous one whole; keep-last-K; which layouts may resume one."""

import json

import pytest
import torch
from accelerate import Accelerator

from bonsai.errors import CheckpointMismatch
from bonsai.train.resume.checkpoint import (TMP_PREFIX, TrainerState, checkpoints_dir, latest_checkpoint,
                               list_checkpoints, load_checkpoint, save_checkpoint)
from bonsai.config import config_from_dict
from bonsai.train.distributed import Dist
from bonsai.train.strategies.ddp import DdpStrategy
from bonsai.train.resume.reshard import needs_reshard
from bonsai.train.strategies.base import Layout
from bonsai.train.resume.resize import resume_accumulation
from conftest import base_config


@pytest.fixture(scope="module")
def dist():
    accelerator = Accelerator(cpu=True)
    return Dist(accelerator, DdpStrategy(accelerator))


def _setup(dist):
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, optimizer = dist.accelerator.prepare(model, optimizer)
    return model, optimizer


def _train_once(model, optimizer):
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    optimizer.zero_grad()


def test_half_written_checkpoint_is_ignored_and_replaced(tmp_path, dist):
    cfg = config_from_dict(base_config(tmp_path / "run", tmp_path))
    model, optimizer = _setup(dist)
    _train_once(model, optimizer)
    first = save_checkpoint(dist, tmp_path, TrainerState(step=1, data_positions=[{"epoch": 0, "taken": 4}]), cfg, keep=2)
    saved_weight = model.weight.detach().clone()

    # What a crash in the middle of saving step 2 leaves behind: a temporary directory, no state file.
    crashed = checkpoints_dir(tmp_path) / f"{TMP_PREFIX}step_00000002"
    crashed.mkdir()
    (crashed / "model.safetensors").write_bytes(b"truncated")
    assert latest_checkpoint(tmp_path) == first

    _train_once(model, optimizer)
    assert not torch.equal(model.weight, saved_weight)
    state = load_checkpoint(dist, first)
    assert state.step == 1 and state.position_for(0).taken == 4
    torch.testing.assert_close(model.weight.detach(), saved_weight, rtol=0, atol=0)

    second = save_checkpoint(dist, tmp_path, TrainerState(step=2, data_positions=[{"epoch": 0, "taken": 8}]), cfg, keep=2)
    assert not crashed.exists() and latest_checkpoint(tmp_path) == second
    assert json.loads((second / "trainer_state.json").read_text())["data_positions"] == [{"epoch": 0, "taken": 8}]
    assert (second / "config.yaml").exists()


def test_keeps_the_last_k(tmp_path, dist):
    cfg = config_from_dict(base_config(tmp_path / "run", tmp_path))
    _setup(dist)
    for step in range(1, 6):
        save_checkpoint(dist, tmp_path, TrainerState(step=step, data_positions=[{"epoch": 0, "taken": step}]), cfg,
                        keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000004", "step_00000005"]


def _saved(world_size, zero_stage, global_batch=8):
    return TrainerState(step=3, world_size=world_size, zero_stage=zero_stage, global_batch=global_batch)


def test_another_world_size_keeps_the_global_batch_under_ddp(tmp_path):
    cfg = config_from_dict(base_config(tmp_path / "run", tmp_path))  # micro-batch 4
    assert resume_accumulation(_saved(2, 0), tmp_path, cfg, 1, 1) == (
        2, "resuming a 2-process checkpoint on 1: global batch 8 kept (1 x micro-batch 4 x accumulation 2)")
    assert resume_accumulation(_saved(2, 0), tmp_path, cfg, 2, 1) == (1, None)
    assert resume_accumulation(_saved(2, 3), tmp_path, cfg, 1, 1)[0] == 2  # ZeRO partitions: resharded


def test_what_is_resharded_and_what_loads_as_it_is():
    ddp, zero3, zero3_off, zero2, fsdp2 = (Layout("ddp"), Layout("zero", 3), Layout("zero", 3, True), Layout("zero", 2),
                                          Layout("fsdp2"))

    def reshard(saved_world, saved, world, layout):
        return needs_reshard(TrainerState(world_size=saved_world, layout=saved.to_dict()), world, layout)

    assert not reshard(2, ddp, 1, ddp)  # DDP files are whole: loaded as they are on any number of processes
    assert not reshard(2, fsdp2, 3, fsdp2)  # a distributed checkpoint reshards on load by itself
    assert not reshard(2, zero3, 2, zero3) and not reshard(2, zero3_off, 2, zero3_off)
    assert reshard(2, zero3, 1, zero3) and reshard(2, zero2, 4, zero2)  # ZeRO partitions for another count
    assert reshard(2, zero3, 2, ddp) and reshard(2, ddp, 2, zero2) and reshard(2, fsdp2, 2, ddp)  # another strategy
    assert reshard(2, zero3, 2, zero3_off)  # offload swaps AdamW for DeepSpeedCPUAdam
    # Older checkpoints recorded only a ZeRO stage; none at all: loaded as before (resize refuses a change).
    assert not needs_reshard(TrainerState(world_size=2, zero_stage=3), 2, zero3)
    assert needs_reshard(TrainerState(world_size=2, zero_stage=0), 2, zero3)
    assert not needs_reshard(TrainerState(world_size=2), 2, zero3)


def test_a_layout_that_cannot_resume_is_refused_with_the_options(tmp_path):
    cfg = config_from_dict(base_config(tmp_path / "run", tmp_path))
    with pytest.raises(CheckpointMismatch, match=r"global batch of 8.*3 process.*Launch 1, 2 process\(es\)$"):
        resume_accumulation(_saved(2, 0), tmp_path, cfg, 3, 1)
    with pytest.raises(CheckpointMismatch, match="global batch of 12.*Launch 1, 3 process.*micro_batch_size to one of "
                                                 "1, 2, 3, 6 for 2"):
        resume_accumulation(_saved(3, 0, 12), tmp_path, cfg, 2, 1)
    with pytest.raises(CheckpointMismatch, match="written before Bonsai could resize.*Relaunch with 2"):
        resume_accumulation(_saved(2, None, 0), tmp_path, cfg, 1, 1)
