"""The one typed config tree: YAML plus dotted overrides, validated once at load.

Everything downstream takes these dataclass-like objects, never a dict: a missing key is a
load-time error here, not a None somewhere in the training loop.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from bonsai.io import write_text_atomic
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

TINY_PHI = "tiny-phi"
# Phi-2's attention and MLP projections; LoRA on all of them is what its fine-tuning recipes use.
PHI_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"]


class ConfigError(ValueError):
    """A config the user must fix; the message names the file and the key."""


class _Section(BaseModel):
    # Each field's docstring is its description: the config reference (docs/reference/config.md) is built from it.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, use_attribute_docstrings=True)


class TinyPhiConfig(_Section):
    """Shape of the random-init Phi built for demos and tests (Phi-2's proportions, scaled down)."""

    hidden_size: int = Field(128, ge=8)
    """Width of the model; must divide by num_attention_heads."""
    num_hidden_layers: int = Field(2, ge=1)
    """Transformer blocks."""
    num_attention_heads: int = Field(4, ge=1)
    """Attention heads per block."""
    vocab_size: int = Field(2048, ge=300)
    """Size of the byte-level BPE tokenizer trained on the run's data."""
    max_position_embeddings: int = Field(2048, ge=16)
    """Longest row the model can take (data.max_length must not exceed it)."""

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> TinyPhiConfig:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} must be divisible by num_attention_heads {self.num_attention_heads}"
            )
        return self


class LoraConfig(_Section):
    """LoRA adapters (used when model.finetune is lora)."""

    r: int = Field(16, ge=1)
    """Rank of each adapter."""
    alpha: float = Field(32, gt=0)
    """Scale of the adapters' update (alpha / r)."""
    dropout: float = Field(0.05, ge=0, lt=1)
    """Dropout on the adapters' input."""
    target_modules: list[str] = Field(default_factory=lambda: list(PHI_LORA_TARGETS), min_length=1)
    """Module names that get an adapter; Phi-2's attention and MLP projections by default."""


class ModelConfig(_Section):
    """What is trained, and how it is scored."""

    name_or_path: str = Field(min_length=1)
    """A checkpoint directory, a hub id (e.g. microsoft/phi-2), or `tiny-phi`."""
    revision: str | None = None
    """A branch, tag or commit of a hub id; null takes the default branch."""
    finetune: Literal["full", "lora"] = "full"
    """full trains every weight; lora trains adapters on a frozen base (model.lora)."""
    lora: LoraConfig = LoraConfig()
    merge_lora_on_save: bool = False
    """LoRA: also write the base with the adapter merged into RUN_DIR/model-merged (one shard at a time)."""
    template: Literal["bonsai", "phi2", "chatml"] = "bonsai"
    """The prompt format: bonsai (`### Category / Instruction / Input / Response`), phi2 (Phi-2's model card:
    `Instruct: ... Output:`), chatml (ChatML's user and assistant turns, im_start to im_end). Saved with the model
    as the tokenizer's chat_template; generate and eval read it back."""
    attn_implementation: Literal["auto", "sdpa_varlen", "flash_attention_2", "flex_attention", "sdpa", "eager"] = "auto"
    """auto: flash_attention_2 on CUDA with flash-attn installed; on a CPU with data.max_length <= 256, sdpa (a
    dense block mask is cheaper there: bench/RESULTS.md); else sdpa_varlen (per-document sdpa). Those and
    flex_attention isolate packed documents without a mask; sdpa and eager use a dense (L x L) block mask."""
    loss_chunk_tokens: int = Field(256, ge=0)
    """Positions scored per chunk of the loss: logits exist for one chunk at a time (their gradients are
    taken in forward, nothing is recomputed). 0 computes the whole row's logits at once."""
    loss_chunk_above_mib: int = Field(256, ge=0)
    """Chunk the loss only where one micro-batch's whole fp32 logits (micro_batch_size x data.max_length x
    vocabulary x 4 bytes) would take at least this many MiB; below it they are small, chunking saves no
    memory that matters and costs a few percent of a step (measured: bench/RESULTS.md, issue 28), so the
    whole-row logits are used. The start-up log says which. 0: always chunk (when loss_chunk_tokens > 0)."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward: less memory, about a third more compute."""
    trust_remote_code: bool = False
    """Run the model repository's own Python code; Phi-2 is native in transformers and needs none."""
    cache_dir: str = ".cache/bonsai"
    """Where `tiny-phi` and its tokenizer are built (keyed by their settings and the data)."""
    tiny: TinyPhiConfig = TinyPhiConfig()


class DataConfig(_Section):
    """The records trained on: where they are, how rows are built from them, what is held out."""

    path: str = Field(min_length=1)
    """A file, a directory or a glob of JSONL/Parquet shards; local or any fsspec URL."""
    max_length: int = Field(512, ge=16)
    """Tokens per row; a longer record is a bad record (see on_bad_record)."""
    packing: bool = True
    """Pack several records per row (attention kept within each record); False pads one record per row."""
    pack_window: int = Field(1024, ge=0)
    """Records packed together best-fit (longest first, tightest row), within an epoch; 0 packs greedily
    in stream order (more padding: a row ends when the next record does not fit)."""
    eval_fraction: float = Field(0.05, ge=0, lt=1)
    """Share of records held out for eval, chosen by a hash of the record id (stable across runs)."""
    shuffle_window: int = Field(1024, ge=1)
    """Records are shuffled within consecutive windows of this many (1 keeps file order)."""
    max_record_bytes: int = Field(1 << 20, ge=1024)
    """A JSONL line longer than this is a bad record, refused before it is parsed or tokenized."""
    on_bad_record: Literal["error", "skip"] = "error"
    """error: stop at start-up naming file, line and field. skip: count it and list it in quarantine/."""
    exclude: str | None = None
    """A file of record ids left out of training and eval: the excluded.jsonl `bonsai data clean` writes,
    or one id per line. Lets a run train without a report's suspects without copying the data."""
    on_change: Literal["error", "new_epoch"] = "error"
    """What a resume does when a shard was appended to, edited, added or removed since the checkpoint (its
    saved byte offsets would point at other records). error: refuse, naming the shard and the change.
    new_epoch: the interrupted epoch ends there and a new one starts over the changed data, announced."""


class TrainConfig(_Section):
    """The optimisation: steps, batch, schedule, checkpoints."""

    output_dir: str = Field(min_length=1)
    """The run directory: checkpoints, logs, the final model. Training again into it resumes."""
    seed: int = 42
    """Seeds the weights' initialisation, dropout and the data order."""
    max_steps: int = Field(ge=1)
    """Optimizer steps to train; may grow on resume to train on."""
    micro_batch_size: int = Field(ge=1)
    """Rows per forward pass on each rank."""
    gradient_accumulation_steps: int | None = Field(None, ge=1)
    """Micro-batches per rank per optimizer step; give this or global_batch_size (neither: 1)."""
    global_batch_size: int | None = Field(None, ge=1)
    """Rows per optimizer step over all ranks; give this or gradient_accumulation_steps."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto: bf16 autocast on a GPU that supports it, fp32 otherwise."""
    lr: float = Field(2e-5, gt=0)
    """Peak learning rate of AdamW, reached after the warm-up."""
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    """The cosine decay ends at lr x this at max_steps."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW's decoupled weight decay, on weight matrices (2-D tensors) only, not on biases and norms."""
    adam_betas: tuple[float, float] = (0.9, 0.95)
    """AdamW's moment coefficients."""
    adam_eps: float = Field(1e-8, gt=0)
    """AdamW's epsilon."""
    warmup_steps: int | None = Field(None, ge=0)
    """Steps of linear warm-up before the cosine decay; give this or warmup_ratio; below max_steps."""
    warmup_ratio: float | None = Field(None, ge=0, lt=1)
    """Warm-up as a share of max_steps."""
    max_grad_norm: float | None = Field(1.0, gt=0)
    """Clip the gradient's global norm to this; null does not clip."""
    checkpoint_every: int = Field(0, ge=0)
    """Steps between checkpoints; 0 saves only at the end."""
    keep_checkpoints: int = Field(2, ge=1)
    """How many of the newest checkpoints are kept; older ones are deleted once a new one is complete."""
    async_checkpoint: bool = False
    """FSDP2 only: a periodic checkpoint's shards are copied to host memory and written by a background
    thread while training goes on; the checkpoint appears (renamed from its temporary name) once the write
    is done, at the latest before the next checkpoint. The final checkpoint and one on a stop request are
    written in the foreground."""
    save_dtype: Literal["auto", "fp32", "bf16"] = "auto"
    """dtype of the final model's weights (full, or merged LoRA): auto saves what the run computed in,
    bf16 under bf16 precision (half the disk; Phi-2 itself ships in half precision), fp32 otherwise.
    Checkpoints always keep the fp32 master weights. LoRA adapters are saved in fp32."""
    compile: bool = False
    """Compile each decoder layer with torch.compile (regional, as torchtitan does): the first step pays the
    compile (tens of seconds; a resume finds it in RUN_DIR/compile_cache), later steps run the compiled
    code. Under DDP, ZeRO-1/2 and FSDP2; not ZeRO-3 (see docs/how-to/compile.md). Generation stays eager."""
    log_every: int = Field(1, ge=1)
    """Steps between metric lines (a step with an instability event and the last step are always logged)."""

    @model_validator(mode="after")
    def _one_warmup_and_one_batch_rule(self) -> TrainConfig:
        problems = []
        if self.warmup_steps is not None and self.warmup_ratio is not None:
            problems.append("set warmup_steps or warmup_ratio, not both")
        if self.gradient_accumulation_steps is not None and self.global_batch_size is not None:
            problems.append("set gradient_accumulation_steps or global_batch_size, not both")
        if self.warmup_steps is not None and self.warmup_steps >= self.max_steps:
            problems.append(f"warmup_steps {self.warmup_steps} must be below max_steps {self.max_steps}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def num_warmup_steps(self) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        return int((self.warmup_ratio or 0.0) * self.max_steps)

    def accumulation_for(self, world_size: int) -> int:
        """Micro-batches per rank per optimizer step, for this many ranks."""
        if self.global_batch_size is None:
            return self.gradient_accumulation_steps or 1
        per_step = self.micro_batch_size * world_size
        if self.global_batch_size % per_step:
            raise ConfigError(
                f"train.global_batch_size {self.global_batch_size} is not divisible by "
                f"train.micro_batch_size {self.micro_batch_size} x world size {world_size} = {per_step}"
            )
        return self.global_batch_size // per_step


class DistributedConfig(_Section):
    """How the processes work together."""

    timeout_s: float = Field(600.0, gt=0)
    """Longest wait in any collective before the run fails instead of hanging."""
    threads_per_process: int | None = Field(None, ge=1)
    """Intra-op CPU threads per process. None: the cores this process may use divided by the processes on
    its node (launchers' own default, OMP_NUM_THREADS=1 under accelerate and torchrun, is replaced)."""


class DecodeConfig(_Section):
    """How probes are answered (the same settings as `bonsai generate`'s options)."""

    max_new_tokens: int = Field(96, ge=1)
    """Answer length limit in tokens."""
    temperature: float = Field(0.0, ge=0)
    """0 decodes greedily (reproducible probes)."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling, with a temperature above 0."""
    repetition_penalty: float = Field(1.1, ge=1.0)
    """Above 1 discourages repeating tokens; 1 is off."""
    no_repeat_ngram_size: int = Field(0, ge=0)
    """Forbid repeating any n-gram of this size; 0 is off."""
    batch_size: int = Field(8, ge=1)
    """Prompts generated together (left-padded)."""


class EvalConfig(_Section):
    """The held-out loss and the probe generations during training."""

    every_steps: int = Field(0, ge=0)
    """Steps between eval-loss passes; 0 evaluates only at the end (if there is an eval split)."""
    max_batches: int | None = Field(None, ge=1)
    """Evaluate on at most this many batches of the eval split; null: all of it."""
    probes: str | None = "default"
    """A JSONL file of probe prompts (record schema; `output` is the reference and may be left out),
    `default` for the shipped set (every category and language), or null for none."""
    probe_every: int = Field(0, ge=0)
    """Steps between probe generations; 0 generates only at the end."""
    decode: DecodeConfig = DecodeConfig()


class WandbConfig(_Section):
    """Weights & Biases logging (rank 0 only)."""

    mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    """auto: WANDB_MODE when set; else online when WANDB_API_KEY is set, offline otherwise (sync later
    with `wandb sync`)."""
    project: str = "bonsai"
    """The W&B project."""
    entity: str | None = None
    """The W&B team or user; null: the logged-in user's default."""
    name: str | None = None
    """Defaults to the output_dir's name."""
    group: str | None = None
    """Defaults to `slurm-<job id>` under SLURM, else the output_dir's name: one group per launch or job."""
    tags: list[str] = Field(default_factory=list)
    """Tags on the W&B run."""


class LoggingConfig(_Section):
    """Where the metrics go besides RUN_DIR/metrics.jsonl."""

    progress_bar: bool = True
    """Shown only when stderr is a terminal."""
    wandb: WandbConfig = WandbConfig()
    peak_tflops_per_device: float | None = Field(None, gt=0)
    """Peak dense TFLOP/s of one device at the training precision, for the MFU estimate. Unset: known
    GPUs are looked up (H100/H200 bf16: 989), and MFU is not logged elsewhere (e.g. on CPU)."""


Policy = Literal["warn", "skip", "rollback"]


class MonitorConfig(_Section):
    """Loss-instability detection. Needs the step's loss and grad norm on the host: one sync per step."""

    enabled: bool = True
    """false removes the detector and its one host sync per step."""
    window: int = Field(64, ge=8)
    """Steps of history for the rolling median and MAD."""
    warmup_steps: int = Field(20, ge=0)
    """No spike is called before this many steps (the early loss falls too fast to have a baseline)."""
    loss_z: float = Field(6.0, gt=0)
    """A loss more than this many robust standard deviations above the rolling median is a spike."""
    grad_z: float = Field(6.0, gt=0)
    """The same for the gradient norm."""
    trend_window: int = Field(100, ge=0)
    """Steps over which the loss must still be falling; 0 turns the trend check off."""
    on_loss_spike: Policy = "warn"
    """warn logs the event; skip drops the step's update (not under DeepSpeed); rollback reloads the latest
    checkpoint and goes on with the data after the step."""
    on_grad_spike: Policy = "warn"
    """As on_loss_spike, for a gradient-norm spike."""
    on_nonfinite: Literal["auto", "skip", "rollback"] = "auto"
    """A non-finite loss or gradient never reaches the weights, so `warn` is not offered here. `auto`:
    `skip` under DDP, `rollback` under DeepSpeed (whose engine applies the update inside backward)."""
    max_rollbacks: int = Field(3, ge=0)
    """Rollbacks allowed in one run; one more stops it with exit code 3."""
    divergence_ratio: float = Field(1.5, gt=1)
    """A loss above this many times the loss of a uniform guess over the vocabulary (ln V) is divergence: the
    model predicts worse than one that knows nothing. Checked from the first step, warm-up included."""
    on_divergence: Literal["stop", "rollback"] = "stop"
    """stop: exit 3 naming the step and the last healthy checkpoint. rollback: back to that checkpoint, data
    after the step (counts against max_rollbacks)."""
    max_skipped_in_a_row: int = Field(5, ge=1)
    """This many updates skipped in a row (non-finite steps, or spikes under `skip`) stop the run: it is not
    recovering."""

    def for_strategy(self, updates_in_backward: bool) -> MonitorConfig:
        """This config with `auto` resolved; an explicit `skip` under a strategy that applies the update
        inside backward (DeepSpeed) is refused, not rewritten."""
        skips = [k for k in ("on_loss_spike", "on_grad_spike", "on_nonfinite") if getattr(self, k) == "skip"]
        if updates_in_backward and self.enabled and skips:
            # The DeepSpeed engine reduces, clips and steps inside the last backward: there is no point
            # between gradients and update where Bonsai could drop the step.
            raise ConfigError(f"monitor.{skips[0]}=skip is not available under DeepSpeed (the engine applies the "
                              f"update inside backward); use rollback or warn, e.g. monitor.{skips[0]}=rollback")
        if self.on_nonfinite != "auto":
            return self
        return self.model_copy(update={"on_nonfinite": "rollback" if updates_in_backward else "skip"})


class BonsaiConfig(_Section):
    """A whole run's config: one YAML file, validated once at load."""

    model: ModelConfig
    data: DataConfig
    train: TrainConfig
    distributed: DistributedConfig = DistributedConfig()
    eval: EvalConfig = EvalConfig()
    logging: LoggingConfig = LoggingConfig()
    monitor: MonitorConfig = MonitorConfig()

    def check_world_size(self, world_size: int) -> int:
        """Validate the batch arithmetic for this many ranks; returns accumulation steps."""
        return self.train.accumulation_for(world_size)


# --- loading -------------------------------------------------------------------------------------

# Whole words at the end of a key: `hf_token`, `wandb_api_key`, `password`, but not `max_new_tokens`.
_SECRET_KEY = re.compile(r"(^|_)(token|secret|password|passwd|api_?key|access_key)$", re.IGNORECASE)
REDACTED = "***redacted***"


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    dotted, raw = text.split("=", 1)
    keys = dotted.strip().split(".")
    if not all(keys):
        raise ConfigError(f"override {text!r}: empty key in {dotted!r}")
    return keys, yaml.safe_load(raw) if raw.strip() else ""


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for i, key in enumerate(keys[:-1]):
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(keys[: i + 1])} is a value, not a section")
            node = child
        node[keys[-1]] = value
    return raw


# Names users bring from other trainers (HF TrainingArguments, TRL), and where Bonsai keeps that setting.
KNOWN_ELSEWHERE = {"learning_rate": "train.lr", "per_device_train_batch_size": "train.micro_batch_size",
                   "batch_size": "train.micro_batch_size", "max_seq_length": "data.max_length",
                   "max_seq_len": "data.max_length", "bf16": "train.precision", "fp16": "train.precision",
                   "max_grad_norm_clip": "train.max_grad_norm", "lora_r": "model.lora.r",
                   "lora_alpha": "model.lora.alpha", "model_name_or_path": "model.name_or_path"}


def config_keys(model: type[BaseModel] | None = None, prefix: str = "") -> list[str]:
    """Every settable key of the config, dotted (`train.lr`, `model.lora.r`)."""
    keys = []
    for name, field in (model or BonsaiConfig).model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            keys += config_keys(kind, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def did_you_mean(key: str) -> str:
    """' (did you mean train.lr?)' for a misspelt or borrowed key, else ''."""
    import difflib

    leaf = key.rsplit(".", 1)[-1]
    known = config_keys()
    if leaf in KNOWN_ELSEWHERE and KNOWN_ELSEWHERE[leaf] in known:
        return f" (did you mean {KNOWN_ELSEWHERE[leaf]}?)"
    section = key.rsplit(".", 1)[0] if "." in key else ""
    leaves = {k.rsplit(".", 1)[-1] for k in known}
    close = difflib.get_close_matches(leaf, sorted(leaves), n=1, cutoff=0.75)
    if not close:
        return ""
    holders = [k for k in known if k.rsplit(".", 1)[-1] == close[0]]
    best = next((k for k in holders if k.rsplit(".", 1)[0] == section), holders[0])  # its own section first
    return f" (did you mean {best}?)"


def _format_errors(source: str, err: ValidationError) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        given = e.get("input")
        # A whole section as "input" (cross-field rules) says nothing the message does not.
        seen = "" if e["type"] == "missing" or isinstance(given, dict) else f" (got {given!r})"
        if e["type"] == "extra_forbidden":
            msg, seen = "unknown key" + did_you_mean(key), ""
        lines.append(f"  {key}: {msg}{seen}")
    return "\n".join(lines)


def config_from_dict(raw: dict, source: str = "<dict>") -> BonsaiConfig:
    try:
        return BonsaiConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(source, err)) from None


def load_config(path: str | Path, overrides: list[str] = ()) -> BonsaiConfig:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config {path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a mapping of sections, got {type(raw).__name__}")
    return config_from_dict(apply_overrides(raw, list(overrides)), source=str(path))


def redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: (REDACTED if _SECRET_KEY.search(str(k)) and v else redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def to_yaml(cfg: BonsaiConfig) -> str:
    return yaml.safe_dump(redact(cfg.model_dump(mode="json")), sort_keys=False, allow_unicode=True)


def save_resolved(cfg: BonsaiConfig, path: Path) -> None:
    write_text_atomic(path, to_yaml(cfg))


# --- resuming -------------------------------------------------------------------------------------

# What may differ from the checkpoint's config when a run resumes: how long it goes, how it is watched,
# logged and checkpointed. Anything else (lr, batch, data, model, precision, ...) would either be
# silently overridden by the saved optimizer and scheduler state or make the run two different runs.
# The micro-batch may change: the checkpoint's global batch is kept (bonsai.train.resume.resize).
MAY_CHANGE_ON_RESUME = ("train.max_steps", "train.micro_batch_size", "train.checkpoint_every",
                        "train.keep_checkpoints", "train.async_checkpoint", "train.log_every", "data.on_change",
                        "eval.", "logging.", "distributed.", "monitor.", "model.cache_dir",
                        "model.loss_chunk_above_mib")  # a speed setting: same losses up to rounding


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_changes(saved: dict, now: BonsaiConfig) -> tuple[list[str], list[str]]:
    """(allowed, refused) differences between a checkpoint's saved config and this run's, each as
    "key: old -> new"."""
    old, new = _flatten(saved), _flatten(redact(now.model_dump(mode="json")))
    allowed, refused = [], []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            line = f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
            (allowed if key.startswith(MAY_CHANGE_ON_RESUME) else refused).append(line)
    return allowed, refused
