"""The held-out loss and the fixed probe questions, every so many steps."""

from __future__ import annotations

from bonsai import metric_keys as keys
from bonsai.evaluate.generation import Probe, average_by_category, generate, generation_rows
from bonsai.model.loss import breakdown_metrics, eval_loss_sums
from bonsai.train.callbacks.base import PeriodicCallback
from bonsai.train.step import micro_batches_of


class EvalCallback(PeriodicCallback):
    """Eval loss overall and per category and language, every `eval.every_steps` and at the end."""

    name = "eval"

    def __init__(self):
        self.last: dict[str, float] = {}  # the latest eval's metrics (the model card's results)

    def every(self) -> int:
        return self.trainer.cfg.eval.every_steps

    def _run(self, step: int) -> None:
        t = self.trainer
        metrics = evaluate(t.dist, t.model, t.data.rows("eval", epochs=1), t.cfg, t.tokenizer.pad_token_id)
        self.last = metrics
        if t.logger and metrics:
            t.logger.log(metrics, step)

    def summary(self) -> dict:
        return {"eval_loss": self.last[keys.EVAL_LOSS]} if self.last else {}


def evaluate(dist, model, rows, cfg, pad_id: int) -> dict[str, float]:
    """Mean response-token loss over the eval split, overall and per category and language.
    Every rank runs the same number of forward passes (ZeRO-3 gathers weights inside forward)."""
    pad_to = cfg.data.max_length if cfg.data.packing else None
    batches = micro_batches_of(list(rows), cfg.train.micro_batch_size, pad_id, pad_to)
    if cfg.eval.max_batches:
        batches = batches[: cfg.eval.max_batches]
    rounds = dist.max(len(batches))
    if rounds == 0:
        return {}
    sums = eval_loss_sums(model, batches + [None] * (rounds - len(batches)), dist.device, pad_id)
    # host sync: eval results are logged
    return breakdown_metrics(keys.EVAL_LOSS, dist.sum(sums).tolist(), keys.EVAL_BITS_PER_BYTE)


class ProbeCallback(PeriodicCallback):
    """The fixed probe questions, every `eval.probe_every` steps and at the end. Each rank generates its
    share at the same time, then one gather: no rank waits on another's generation."""

    name = "probes"

    def __init__(self, probes: list[Probe]):
        self.probes = probes

    def every(self) -> int:
        return self.trainer.cfg.eval.probe_every

    def _run(self, step: int) -> None:
        t = self.trainer
        mine = self.probes[t.dist.rank :: t.dist.world_size]
        records = [p.record for p in mine]
        model = t.dist.strategy.unwrap(t.model)
        synced = t.dist.strategy.shards_parameters and t.dist.world_size > 1
        if synced:  # every rank generates as many batches (the extra ones repeat a probe and are dropped)
            share = -(-len(self.probes) // t.dist.world_size)
            outputs = generate(model, t.tokenizer, records + [self.probes[0].record] * (share - len(records)),
                               t.cfg.eval.decode, synced=True)[: len(records)]
        else:
            outputs = generate(model, t.tokenizer, records, t.cfg.eval.decode) if mine else []
        rows = generation_rows(t.tokenizer, records, outputs, [p.reference for p in mine], step)
        rows = sorted((r for per_rank in t.dist.gather_objects(rows) for r in per_rank), key=lambda r: r["id"])
        if t.logger:
            t.logger.log_rows("generations", rows, step)
            t.logger.log(average_by_category(rows, keys.PROBE), step)
