"""Names of the logged metrics (W&B and RUN_DIR/metrics.jsonl), in the convention of HF's Trainer and TRL:
`train/...` for training, `eval/...` for evaluation, and a breakdown as `<metric>_by_category/<c>` or
`<metric>_by_language/<l>`. Every writer and reader takes its names from here, and DESCRIBED says what each
one means: docs/reference/metrics.md is generated from it (a key without a row there fails the docs test).
"""

from __future__ import annotations

STEP = "train/global_step"  # the W&B x-axis; metrics.jsonl rows carry it as "step"
TRAIN_LOSS = "train/loss"
TRAIN_BITS_PER_BYTE = "train/bits_per_byte"  # loss per UTF-8 byte of the answers: comparable across ja, en, zh
LEARNING_RATE = "train/learning_rate"
GRAD_NORM = "train/grad_norm"
TOKENS_SEEN = "train/num_input_tokens_seen"
TARGET_TOKENS_SEEN = "train/num_target_tokens_seen"
SKIPPED = "train/skipped_step"
TOKENS_PER_SECOND = "train/tokens_per_second"
TARGET_TOKENS_PER_SECOND = "train/target_tokens_per_second"
STEP_SECONDS = "train/step_seconds"
MFU = "train/mfu"
EVAL_LOSS = "eval/loss"
EVAL_BITS_PER_BYTE = "eval/bits_per_byte"
PROBE = "probe"  # generation metrics of the fixed probe questions during training: probe/<metric>
GENERATION = "eval/generation"  # generation metrics of `bonsai eval` on held-out records
DATA_EPOCH = "data/epoch"
DATA_TAKEN = "data/taken"
MAX_ALLOCATED_GB = "memory/max_allocated_gb"
MAX_RESERVED_GB = "memory/max_reserved_gb"
MAX_RSS_GB = "memory/max_rss_gb"
PARAMS_BYTES = "memory/params_bytes"
GRADS_BYTES = "memory/grads_bytes"
OPTIMIZER_BYTES = "memory/optimizer_bytes"
MASTER_WEIGHTS_BYTES = "memory/master_weights_bytes"

CATEGORY = "_by_category/"
LANGUAGE = "_by_language/"


def by_category(metric: str, category: str) -> str:
    return f"{metric}{CATEGORY}{category}"



def by_language(metric: str, language: str) -> str:
    return f"{metric}{LANGUAGE}{language}"


_LOG = "log steps"
# key (or pattern: <c> a category, <l> a language, <metric> a generation metric) -> (when it is logged, what it is)
DESCRIBED = {
    STEP: ("every W&B row", "Bonsai's optimizer step, the x-axis; a rollback shows as the step going back "
                            "(metrics.jsonl rows carry it as `step`, with `time`)"),
    TRAIN_LOSS: (_LOG, "mean loss per target (response) token of the step, over every micro-batch and rank"),
    by_category(TRAIN_LOSS, "<c>"): (_LOG, "the same, over the step's records of one category"),
    by_language(TRAIN_LOSS, "<l>"): (_LOG, "the same, over the step's records of one language (en, ja, zh)"),
    TRAIN_BITS_PER_BYTE: (_LOG, "the step's loss per UTF-8 byte of the answers, in bits: comparable across ja, en "
                                "and zh, whose tokenizers spend different numbers of tokens per character"),
    by_category(TRAIN_BITS_PER_BYTE, "<c>"): (_LOG, "the same, per category"),
    by_language(TRAIN_BITS_PER_BYTE, "<l>"): (_LOG, "the same, per language"),
    LEARNING_RATE: (_LOG, "the scheduler's rate after the step"),
    GRAD_NORM: (_LOG, "gradient norm before clipping"),
    TOKENS_PER_SECOND: (_LOG, "tokens (padding excluded) per second of the step, all ranks"),
    TARGET_TOKENS_PER_SECOND: (_LOG, "trained (response) tokens per second, all ranks"),
    STEP_SECONDS: (_LOG, "wall time of the step"),
    MFU: ("log steps, where the device's peak is known",
          "model FLOPs utilisation: tokens/s x FLOPs per token / (peak FLOP/s per device x devices)"),
    TOKENS_SEEN: (_LOG, "tokens trained on so far, padding excluded"),
    TARGET_TOKENS_SEEN: (_LOG, "response tokens trained on so far"),
    SKIPPED: (_LOG, "1 when the monitor skipped the step's update"),
    DATA_EPOCH: (_LOG, "rank 0's epoch in the data stream"),
    DATA_TAKEN: (_LOG, "records rank 0 has taken from the stream in this epoch"),
    MAX_ALLOCATED_GB: ("log steps, on a GPU", "peak GPU memory allocated by tensors (GiB)"),
    MAX_RESERVED_GB: ("log steps, on a GPU", "peak GPU memory reserved by the caching allocator (GiB)"),
    MAX_RSS_GB: ("log steps, on a CPU", "the process's peak resident memory (GiB)"),
    PARAMS_BYTES: ("once, after the first update", "this rank's parameter bytes (ZeRO-3: its partition), measured"),
    GRADS_BYTES: ("once, after the first update",
                  "gradient bytes by rule: full under DDP and ZeRO-1, a rank's share under ZeRO-2/3"),
    OPTIMIZER_BYTES: ("once, after the first update", "this rank's optimizer state (Adam's moments), measured"),
    MASTER_WEIGHTS_BYTES: ("once, after the first update", "DeepSpeed's fp32 master copies on this rank, measured"),
    EVAL_LOSS: ("eval steps and the end", "mean loss per target token of the held-out split"),
    by_category(EVAL_LOSS, "<c>"): ("eval steps and the end", "the same, per category"),
    by_language(EVAL_LOSS, "<l>"): ("eval steps and the end", "the same, per language"),
    EVAL_BITS_PER_BYTE: ("eval steps and the end", "bits per byte of the held-out answers"),
    by_category(EVAL_BITS_PER_BYTE, "<c>"): ("eval steps and the end", "the same, per category"),
    by_language(EVAL_BITS_PER_BYTE, "<l>"): ("eval steps and the end", "the same, per language"),
    f"{PROBE}/<metric>": ("probe steps and the end", "a generation metric averaged over the probes: "
                          "repeated_3gram_ratio, distinct_1, distinct_2, longest_repeated_span, length, eos_rate (the "
                          "answer stopped before max_new_tokens), language_switch_rate (answered in another language "
                          "than asked); with a "
                          "reference also exact, contains (question and classification), chrf (translation)"),
    by_category(f"{PROBE}/<metric>", "<c>"): ("probe steps and the end", "the same, per category"),
    f"{GENERATION}/<metric>": ("`bonsai eval`, in eval.json", "the probe metrics above, over the held-out records"),
    by_category(f"{GENERATION}/<metric>", "<c>"): ("`bonsai eval`, in eval.json", "the same, per category"),
}
