"""An update that does not happen is never silent, and the step always ends on its accumulation boundary.

In-process, with a real Accelerator and AdamW: the guard is triggered on purpose the way the bug did it
(Accelerate's micro-step counter restored off the boundary, so `optimizer.step()` is a no-op), and the
step function is shown to put the boundary back on the last micro-batch whatever counter it finds."""

import pytest
import torch
from accelerate import Accelerator

from bonsai.errors import UpdateNotApplied
from bonsai.train.strategies.accelerated import start_at_boundary
from bonsai.train.update_guard import UpdateGuard


def _prepared(accumulation: int):
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=accumulation)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    return accelerator, model, optimizer


def _one_step(accelerator, model, optimizer, micro_batches: int) -> None:
    for _ in range(micro_batches):
        with accelerator.accumulate(model):
            accelerator.backward(model(torch.ones(2, 4)).sum())
    optimizer.step()
    optimizer.zero_grad()


def test_a_missed_accumulation_boundary_stops_the_run_naming_the_step():
    accelerator, model, optimizer = _prepared(accumulation=4)
    guard = UpdateGuard()
    try:
        accelerator.step = 34  # as load_state restores it: 17 steps x 2 micro-batches, now 4 a step
        before = model.weight.detach().clone()
        _one_step(accelerator, model, optimizer, micro_batches=4)
        assert torch.equal(model.weight, before)  # the bug itself: Accelerate silently skipped the update
        with pytest.raises(UpdateNotApplied, match=r"^step 18: the optimizer applied no update although Bonsai "
                                                   r"did not skip it; the weights are unchanged since step 17 \(why\)"):
            guard.last_applied = 17
            guard.check(18, skipped=False, why_not=lambda: " (why)")
    finally:
        guard.close()


def test_the_guard_passes_applied_and_skipped_updates_and_catches_an_unwanted_one():
    accelerator, model, optimizer = _prepared(accumulation=2)
    guard = UpdateGuard()
    try:
        start_at_boundary(accelerator, 2)
        _one_step(accelerator, model, optimizer, micro_batches=2)
        guard.check(1, skipped=False)
        optimizer.zero_grad()  # a skipped step: the trainer drops the gradients and does not step
        guard.check(2, skipped=True)
        start_at_boundary(accelerator, 2)
        _one_step(accelerator, model, optimizer, micro_batches=2)
        with pytest.raises(UpdateNotApplied, match="step 3: the optimizer applied an update that Bonsai skipped"):
            guard.check(3, skipped=True)
    finally:
        guard.close()


@pytest.mark.parametrize("restored", [0, 1, 2, 3, 34])
def test_every_step_ends_on_its_boundary_whatever_counter_was_restored(restored):
    accelerator, model, optimizer = _prepared(accumulation=4)
    guard = UpdateGuard()
    try:
        accelerator.step = restored
        for step in range(1, 4):
            before = model.weight.detach().clone()
            start_at_boundary(accelerator, 4)
            _one_step(accelerator, model, optimizer, micro_batches=4)
            guard.check(step, skipped=False)
            assert not torch.equal(model.weight, before), step
    finally:
        guard.close()


def test_a_step_whose_micro_batches_disagree_with_the_accelerator_is_refused():
    accelerator, _, _ = _prepared(accumulation=4)
    with pytest.raises(RuntimeError, match="2 micro-batches in a step, but Accelerate accumulates 4"):
        start_at_boundary(accelerator, 2)
