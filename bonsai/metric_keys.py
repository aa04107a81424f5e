"""Names of the logged metrics (W&B and RUN_DIR/metrics.jsonl), in the convention of HF's Trainer and TRL:
`train/...` for training, `eval/...` for evaluation, and a breakdown as `<metric>_by_category/<c>` or
`<metric>_by_language/<l>`. Every writer and reader takes its names from here; README "Metrics" lists them.
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

CATEGORY = "_by_category/"
LANGUAGE = "_by_language/"
