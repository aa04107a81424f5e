"""train.compile: compiled decoder layers train as the eager ones do, compile once per shape and grad mode,
and a resume under FSDP2 finds what the first start compiled. Also: the model trains in train mode
(gradient checkpointing really recomputes)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest
import torch

from bonsai.config import BonsaiConfig
from bonsai.model.compile import decoder_layers
from bonsai.rundir import RunDir
from bonsai.train.callbacks import Callback
from bonsai.train.distributed import setup_distributed
from bonsai.train.trainer import Trainer

from conftest import ROOT, base_config, subprocess_env, train_command, write_config

LOSS_TOLERANCE = 1e-5  # relative; compiled and eager kernels sum in other orders (seen: 1e-7 to 2e-7)


def config(tmp_path, model_cache, name: str, **train) -> dict:
    raw = base_config(tmp_path / name, model_cache)
    raw["train"].update({"max_steps": 6, "global_batch_size": 8, "gradient_accumulation_steps": None, **train})
    raw["eval"] = {"every_steps": 0, "probes": None}
    raw["logging"]["wandb"] = {"mode": "disabled"}
    return raw


def train_here(raw: dict, callbacks: list[Callback] = ()) -> tuple[Trainer, list[dict]]:
    """One process, in this one; returns the trainer and its metrics rows."""
    cfg = BonsaiConfig.model_validate(raw)
    trainer = Trainer(cfg, setup_distributed(cfg, 1), 1, time.perf_counter())
    assert trainer.setup() is None
    trainer.callbacks.callbacks.extend(callbacks)
    try:
        assert trainer.fit() is None
    finally:
        trainer.close()
    return trainer, read_rows(raw)


def read_rows(raw: dict) -> list[dict]:
    return [json.loads(line) for line in RunDir(raw["train"]["output_dir"]).metrics.read_text().splitlines()]


def losses(rows: list[dict], key: str = "train/loss") -> dict[int, float]:
    return {r["step"]: r[key] for r in rows if key in r}


def assert_same_losses(got: dict[int, float], want: dict[int, float]) -> None:
    assert got.keys() == want.keys()
    for step, loss in want.items():
        assert got[step] == pytest.approx(loss, rel=LOSS_TOLERANCE), f"step {step}"


def compile_summary(trainer: Trainer) -> dict:
    return trainer.callbacks.find("compile").summary()["compile"]


def test_compiled_layers_train_as_eager_ones_and_compile_once(tmp_path, model_cache):
    torch._dynamo.reset()  # graphs of other tests in this process would be reused, not built
    eager_raw = config(tmp_path, model_cache, "eager")
    compiled_raw = config(tmp_path, model_cache, "compiled", compile=True)
    for raw in (eager_raw, compiled_raw):
        raw["eval"]["every_steps"] = 2  # three evaluations: only the first may build a graph
    _, eager = train_here(eager_raw)
    trainer, compiled = train_here(compiled_raw)
    assert_same_losses(losses(compiled), losses(eager))
    assert_same_losses(losses(compiled, "eval/loss"), losses(eager, "eval/loss"))
    # Graphs for training's shape at step 1, the first evaluation's (no grad; its last, shorter batch) at
    # step 2, and none after: not at the later evaluations, nor at any training step.
    assert compile_summary(trainer)["built_at_steps"] == [1, 2]
    assert (RunDir(compiled_raw["train"]["output_dir"]).compile_cache).is_dir()


class RowWidths(Callback):
    name = "row_widths"

    def __init__(self):
        self.widths: set[int] = set()

    def post_step(self, outcome) -> None:
        self.widths.add(max(row.length for row in outcome.rows))


def test_unpacked_rows_of_every_length_run_one_graph(tmp_path, model_cache):
    """Without packing a batch is as long as its longest row: compiled with a dynamic length, one graph
    serves them all instead of one per length."""
    torch._dynamo.reset()
    raw = config(tmp_path, model_cache, "unpacked", compile=True)
    raw["data"]["packing"] = False
    widths = RowWidths()
    trainer, _ = train_here(raw, [widths])
    assert len(widths.widths) >= 4, widths.widths  # the test means something only if lengths vary
    summary = compile_summary(trainer)
    assert summary["graphs_after_first_step"] == 0 and summary["graphs"] >= 1


def test_gradient_checkpointing_recomputes_every_layer(tmp_path, model_cache):
    """Outcome, not the flag: with model.gradient_checkpointing each layer's forward runs again in the
    backward (transformers checkpoints only a model in train mode; from_pretrained hands it over in eval
    mode, which silently turned checkpointing, and dropout, off)."""
    calls = {}

    class CountLayerCalls(Callback):
        name = "layer_calls"

        def setup(self, trainer) -> None:
            super().setup(trainer)
            inside = decoder_layers(trainer.model)[0].mlp  # transformers checkpoints the layer's forward
            inside.register_forward_pre_hook(lambda *_: calls.__setitem__("n", calls.get("n", 0) + 1))

    for checkpointing in (False, True):
        calls.clear()
        raw = config(tmp_path, model_cache, f"gc-{checkpointing}", max_steps=2, warmup_steps=1)
        raw["model"]["gradient_checkpointing"] = checkpointing
        cfg = BonsaiConfig.model_validate(raw)
        trainer = Trainer(cfg, setup_distributed(cfg, 1), 1, time.perf_counter())
        assert trainer.setup() is None
        counter = CountLayerCalls()
        counter.setup(trainer)
        try:
            assert trainer.fit() is None
        finally:
            trainer.close()
        micro_batches = 2 * trainer.accumulation  # 2 steps
        assert calls["n"] == micro_batches * (2 if checkpointing else 1), (calls, trainer.accumulation)


def launch(raw: dict, config_path, nproc: int, launch_file: str) -> dict:
    write_config(config_path, raw)
    env = subprocess_env()
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)  # set by the runs compiled in this test process
    proc = subprocess.run(train_command(config_path, nproc=nproc, launch=launch_file), cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    done = next(line for line in proc.stdout.splitlines() if line.startswith("done: "))
    return json.loads(done[len("done: "):])


def test_fsdp2_compiled_run_resumes_without_compiling_more(tmp_path, model_cache):
    """Two processes under FSDP2, compiled: the losses are the eager run's, before and after a preemption,
    and the resume builds no more graphs than the first start did (it finds the compiled code in the run
    dir)."""
    reference = config(tmp_path, model_cache, "reference")
    launch(reference, tmp_path / "reference.yaml", 2, "fsdp2")
    raw = config(tmp_path, model_cache, "fsdp2", compile=True, checkpoint_every=3)
    first = launch(raw, tmp_path / "fsdp2.yaml", 2, "fsdp2")
    run = RunDir(raw["train"]["output_dir"])
    assert_same_losses(losses(read_rows(raw)), losses(read_rows(reference)))
    # Preempted right after step 3's checkpoint: what a requeue finds.
    shutil.rmtree(run.root / "checkpoints" / "step_00000006")
    shutil.rmtree(run.root / "model")
    (run.root / "summary.json").unlink(missing_ok=True)
    resumed = launch(raw, tmp_path / "fsdp2.yaml", 2, "fsdp2")
    assert_same_losses(losses(read_rows(raw)), losses(read_rows(reference)))
    assert first["compile"]["built_at_steps"] == [1] and resumed["compile"]["built_at_steps"] == [4]
    assert resumed["compile"]["graphs"] <= first["compile"]["graphs"]
    assert any(run.compile_cache.iterdir())
