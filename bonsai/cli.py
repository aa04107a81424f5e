"""The `bonsai` command: parse, build, run, clean up. Errors a user can fix exit 2 with one clear message."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bonsai.config import ConfigError, DecodeConfig, load_config, to_yaml
from bonsai.data.records import CATEGORIES, LANGUAGES
from bonsai.data.template import TEMPLATES, use_template
from bonsai.version import package_version


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bonsai", description="Supervised fine-tuning of small language models.")
    parser.add_argument("--version", action="version", version=f"bonsai {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="write a ready project: configs, launch files, DeepSpeed configs, the sbatch "
                                       "template, sample data and a README",
                          description="Run Bonsai's commands from DIR afterwards (its files name each other relative "
                                      "to it).")
    init.add_argument("directory", metavar="DIR", help="a new (or empty) directory")
    train = sub.add_parser(
        "train",
        help="fine-tune a model (run under `accelerate launch` for several processes)",
        description="Train from CONFIG; running it again on the same output_dir resumes from the latest checkpoint.",
    )
    train.add_argument("config", help="YAML config, e.g. configs/demo.yaml")
    train.add_argument("overrides", nargs="*", metavar="section.key=value", help="e.g. train.lr=1e-4")
    train.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    train.add_argument("--debug", action="store_true", help="print the traceback of an error, not just its line")
    report = sub.add_parser(
        "report",
        help="loss curve, instability events and suspect records of a run",
        description="Writes report.png and report.json into RUN_DIR (or --out) and prints a summary. On a run "
                    "still training, says so: its per-record statistics are those of its last checkpoint.",
    )
    report.add_argument("run_dir", help="a run directory (train.output_dir)")
    report.add_argument("--out", metavar="DIR", help="write report.png and report.json here instead (e.g. for a "
                                                     "read-only run directory)")

    gen = sub.add_parser("generate", help="answer prompts with a trained model, using the training template",
                         description="MODEL: a model dir (full, merged or exported), a LoRA adapter dir, or a hub id.")
    gen.add_argument("model", help="model dir, LoRA adapter dir or hub id")
    what = gen.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help="the instruction")
    what.add_argument("--file", help="JSONL of prompts in the record schema (output, if given, is the reference)")
    gen.add_argument("--input", default="", help="context for --prompt")
    gen.add_argument("--category", default="open_qa", choices=CATEGORIES, help="task shown in the prompt (default open_qa)")
    gen.add_argument("--lang", choices=LANGUAGES, help="language of the answer (default: the prompt's script)")
    gen.add_argument("--source-lang", choices=LANGUAGES, help="for --category translation")
    _model_arguments(gen)
    _decode_arguments(gen)

    ev = sub.add_parser("eval", help="compare models on the same records: loss, quality and repetition",
                        description="Writes eval.json, eval_generations.jsonl and eval.png to --out.")
    ev.add_argument("models", nargs="+", help="model dirs, LoRA adapter dirs or hub ids to compare")
    ev.add_argument("--data", required=True, help="records to evaluate on (file, directory or glob)")
    ev.add_argument("--out", default="eval", help="output directory (default: ./eval)")
    ev.add_argument("--generate-limit", type=int, default=100, help="generate answers for the first N records")
    _model_arguments(ev)
    _decode_arguments(ev)

    _ablate_arguments(sub)

    exp = sub.add_parser("export", help="a checkpoint (ZeRO shards included) as a Hugging Face model dir",
                         description="Writes DIR (safetensors); for LoRA the adapter in DIR and a merged model in "
                                     "DIR-merged.")
    exp.add_argument("checkpoint", help="RUN_DIR/checkpoints/step_NNNNNNNN")
    exp.add_argument("--out", required=True, help="directory to write the model to")

    data = sub.add_parser("data", help="dataset tools: audit, clean, convert, shard, publish")
    dsub = data.add_subparsers(dest="data_command", required=True)
    audit = dsub.add_parser("audit", help="find bad, duplicated, contradictory and mislabelled records",
                            description="Prints a table, writes audit.json and audit.png to --out; exits 1 when a "
                                        "finding reaches --fail-on.")
    audit.add_argument("paths", nargs="+", help="files, directories or globs of records")
    audit.add_argument("--out", default="audit", help="output directory (default: ./audit)")
    audit.add_argument("--tokenizer", help="a model or tokenizer dir: check token lengths with the template")
    audit.add_argument("--max-length", type=int, help="tokens; longer records are errors (needs --tokenizer)")
    audit.add_argument("--min-output-units", type=int, default=2,
                       help="answers shorter than this (words; characters in ja/zh) in prose categories are flagged")
    audit.add_argument("--fail-on", choices=["error", "warning", "never"], default="error",
                       help="exit 1 when a finding is at least this severe (default error)")
    clean = dsub.add_parser("clean", help="the data without a run's suspect records, and excluded.jsonl",
                            description="Chooses suspects from RUN_DIR's report (every record the data, or two "
                                        "training signals, speak against, most suspect first; --top or --min-score "
                                        "narrow it), writes the run's data "
                                        "without them to --out under the same shard names, and --out/excluded.jsonl "
                                        "(id, file:line, score, reasons). Train on --out, or on the original data "
                                        "with data.exclude=OUT/excluded.jsonl.")
    clean.add_argument("--from-report", required=True, metavar="RUN_DIR", help="a Bonsai run directory")
    pick = clean.add_mutually_exclusive_group()
    pick.add_argument("--top", type=int, metavar="K", help="the K most suspect records")
    pick.add_argument("--min-score", type=float, metavar="S", help="suspects scoring at least S")
    clean.add_argument("--data", help="the data to clean (default: the run's data.path)")
    clean.add_argument("--out", required=True, help="a new directory")
    conv = dsub.add_parser("convert", help="Alpaca, Dolly or chat data (JSON, JSONL, Parquet) into Bonsai's schema",
                           description="Chat data (messages: [{role, content}], ShareGPT conversations: [{from, "
                                       "value}]) maps one user turn and its assistant answer to a record; anything "
                                       "else is refused with file:line.")
    conv.add_argument("paths", nargs="+", help="files to convert")
    conv.add_argument("--format", required=True, choices=["alpaca", "dolly", "messages", "sharegpt"],
                      help="the source's schema")
    conv.add_argument("--out", required=True, help="JSONL file to write")
    conv.add_argument("--category", choices=CATEGORIES, help="for records without one (Alpaca, chat data)")
    conv.add_argument("--category-map", nargs="*", default=[], metavar="SOURCE=BONSAI",
                      help="the source's category names in Bonsai's, e.g. general_qa=open_qa")
    conv.add_argument("--lang", choices=LANGUAGES, help="default: detected from the output's script")
    conv.add_argument("--id-prefix", default="rec", help="ids are PREFIX-<hash of the text> where a record has none")
    conv.add_argument("--drop-system", action="store_true",
                      help="chat data: leave system messages out (Bonsai's templates have no system turn)")
    sh = dsub.add_parser("shard", help="balanced shards plus a manifest (counts, sha256) for shared storage")
    sh.add_argument("paths", nargs="+", help="files, directories or globs of records")
    sh.add_argument("--out", required=True, help="directory for the shards and manifest.json")
    sh.add_argument("--shards", type=int, required=True, help="number of shards (at least the number of ranks)")
    sh.add_argument("--format", choices=["jsonl", "parquet"], default="jsonl", help="shard file format")
    pub = dsub.add_parser("publish", help="a directory datasets.load_dataset() loads, with a dataset card")
    pub.add_argument("path", help="records to publish (file, directory or glob)")
    pub.add_argument("--out", required=True, help="directory to write the dataset to")
    pub.add_argument("--name", default="bonsai-sft", help="dataset name in the card")
    pub.add_argument("--license", default="cc-by-4.0", help="license id in the card")
    pub.add_argument("--push-to-hub", metavar="REPO_ID", help="also push (needs HF_TOKEN and the network)")

    slurm = sub.add_parser("slurm", help="submit training to a SLURM cluster (preemption-safe, requeues itself)")
    ssub = slurm.add_subparsers(dest="slurm_command", required=True)
    sb = ssub.add_parser("submit", help="render slurm/train.sbatch for CONFIG and sbatch it",
                         description="One task per node runs `accelerate launch` for that node's processes. On "
                                     "preemption or near the time limit, training checkpoints and the job requeues "
                                     "itself; the next run resumes exactly. The log is RUN_DIR/slurm-JOBID.log.")
    sb.add_argument("config", help="YAML config")
    sb.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides, e.g. train.lr=1e-4")
    sb.add_argument("--nodes", type=int, required=True, help="number of nodes")
    sb.add_argument("--gpus-per-node", type=int, required=True, help="0 for a CPU-only job (then --procs-per-node)")
    sb.add_argument("--procs-per-node", type=int, help="training processes per node (default: one per GPU)")
    sb.add_argument("--partition", help="SLURM partition")
    sb.add_argument("--time", help="time limit, SLURM's format (e.g. 4:00:00 or 2-00:00)")
    sb.add_argument("--launch", dest="launch_config", help="Accelerate config, e.g. launch/zero3.yaml (default: DDP)")
    sb.add_argument("--grace", dest="grace_s", type=int, default=300,
                    help="seconds before the time limit at which training is told to checkpoint (default 300)")
    sb.add_argument("--max-restarts", type=int, default=20, help="requeue at most this many times (default 20)")
    sb.add_argument("--cpus-per-task", type=int, help="cores per node (default: one per process)")
    sb.add_argument("--job-name", help="SLURM job name (default: bonsai-<output_dir name>)")
    sb.add_argument("--sbatch-arg", dest="sbatch_args", action="append", default=[], metavar="ARG",
                    help="passed to sbatch as an #SBATCH line, e.g. --sbatch-arg=--account=ml (repeatable)")
    sb.add_argument("--dry-run", action="store_true", help="print the script and the sbatch command; submit nothing")
    sub.add_parser("env", help="versions, devices, DeepSpeed ops, W&B login and SLURM: paste it into a bug report",
                   description="Prints a Markdown list; secrets are never shown, only whether they are set.")
    return parser


def _model_arguments(p) -> None:
    p.add_argument("--template", choices=sorted(TEMPLATES),
                   help="prompt format (default: the one saved with the model, else bonsai); e.g. phi2 for the "
                        "base microsoft/phi-2")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run the model repository's own Python code (only for a source you trust)")


def _ablate_arguments(sub) -> None:
    ab = sub.add_parser("ablate", help="A/B: train with and without excluded records, compare on the same records",
                        description="Trains CONFIG as it is (baseline) and with data.exclude=EXCLUDED (cleaned), "
                                    "once per seed, in OUT/<arm>-seed<N> (runs already finished are reused, "
                                    "unfinished ones resume), then compares the final models on the held-out "
                                    "records (the excluded left out of both) and on the kept records the excluded "
                                    "contradicted: loss per category and language, loss-curve roughness, detector "
                                    "events, probe repetition and quality. Writes OUT/ablate.json and "
                                    "OUT/ablate.png and prints a table; with 2+ seeds each difference is set "
                                    "against the noise band the seeds give.")
    ab.add_argument("config", help="YAML config of the baseline")
    ab.add_argument("overrides", nargs="*", metavar="section.key=value", help="applied to both arms")
    ab.add_argument("--exclude", required=True, metavar="EXCLUDED",
                    help="excluded.jsonl from `bonsai data clean`, or one record id per line")
    ab.add_argument("--seeds", type=int, default=1, help="seeds per arm, from train.seed up (default 1; 2+ "
                                                         "give a noise band)")
    ab.add_argument("--out", help="directory for the runs and the report (default: <train.output_dir>-ablate)")
    ab.add_argument("--eval-data", help="held-out records to compare on (default: the data's eval split)")
    ab.add_argument("--generate-limit", type=int, default=32, help="also generate for the first N held-out records")
    ab.add_argument("--launch", help='how to start each training, e.g. "accelerate launch --config_file '
                                     'launch/ddp.yaml" (default: this Python, one process)')
    ab.add_argument("--baseline", metavar="RUN_DIR", help="a finished run of this config (e.g. the one whose "
                                                          "report gave the suspects): the first seed's baseline")
    ab.add_argument("--run-timeout", type=float, metavar="SECONDS", help="give up on a training after this long")


def _decode_arguments(parser) -> None:
    defaults = DecodeConfig()
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens,
                        help=f"answer length limit in tokens (default {defaults.max_new_tokens})")
    parser.add_argument("--temperature", type=float, default=defaults.temperature, help="0: greedy")
    parser.add_argument("--top-p", type=float, default=defaults.top_p, help="nucleus sampling (with --temperature > 0)")
    parser.add_argument("--repetition-penalty", type=float, default=defaults.repetition_penalty,
                        help="> 1 discourages repeating tokens (1: off)")
    parser.add_argument("--no-repeat-ngram-size", type=int, default=defaults.no_repeat_ngram_size,
                        help="forbid repeating any n-gram of this size (0: off)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="prompts generated together")


def _decode_config(args) -> DecodeConfig:
    return DecodeConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                        repetition_penalty=args.repetition_penalty, no_repeat_ngram_size=args.no_repeat_ngram_size,
                        batch_size=args.batch_size)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # Overrides may also come after the options (`submit CONFIG --nodes 2 train.lr=1e-4`).
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "train":
        return _train(args)
    if args.command == "env":
        return _env(args)
    if args.command == "report":
        return _report(args)
    if args.command == "init":
        return _init(args)
    if args.command == "generate":
        return _generate(args)
    if args.command == "eval":
        return _eval(args)
    if args.command == "data":
        return _data(args)
    if args.command == "export":
        return _export(args)
    if args.command == "ablate":
        return _ablate(args)
    if args.command == "slurm":
        return _slurm(args)
    raise AssertionError(args.command)


def train_exit_codes() -> dict[type[Exception], int]:
    """`bonsai train`'s exit code for each error a user can act on (docs/reference/exit-codes.md lists them)."""
    from bonsai.data.records import BadRecord
    from bonsai.data.stream import DataSourceError
    from bonsai.errors import (CheckpointMismatch, CheckpointWriteError, CollectiveFailure, DataError, ModelSourceError,
                               RunDirLocked, TrainingUnstable, UpdateNotApplied, WorldSizeMismatch)

    return {ConfigError: 2, DataSourceError: 2, DataError: 2, BadRecord: 2, CheckpointMismatch: 2,
            WorldSizeMismatch: 2, RunDirLocked: 2, ModelSourceError: 2, CheckpointWriteError: 5,
            TrainingUnstable: 3, UpdateNotApplied: 3, CollectiveFailure: 4}


def _train(args) -> int:
    """Errors a user can act on are one line (the traceback with --debug); anything else is a bug and
    keeps its traceback."""
    from bonsai.errors import error_line
    from bonsai.train.distributed import launcher_world_size

    user_errors = train_exit_codes()
    try:
        cfg = load_config(args.config, args.overrides)
        cfg.check_world_size(launcher_world_size())
        if args.dry_run:
            print(to_yaml(cfg), end="")
            return 0
        from bonsai.train.trainer import train

        return train(cfg)
    except tuple(user_errors) as err:
        if args.debug:
            import traceback

            traceback.print_exc()
        code = next(code for kind, code in user_errors.items() if isinstance(err, kind))
        if not getattr(err, "reported", False):
            print(error_line(err, "training stopped" if code == 3 else "error"), file=sys.stderr, flush=True)
        return code
    except KeyboardInterrupt:
        print("bonsai: aborted by a second Ctrl-C: the steps since the last complete checkpoint are lost",
              file=sys.stderr)
        return 130


def run() -> None:
    """The `bonsai` program. Ends the process without the interpreter's shutdown, once stdout, stderr
    and logging are flushed (the trainer has already closed every log, checkpoint and W&B run and torn
    the process group down): tearing down the modules of torch, transformers and DeepSpeed takes ~1 s
    per process, and after distributed training it can abort ("terminate called without an active
    exception": C++ threads of the comm backends destroyed while joinable), turning a finished run into
    exit 1 and a FAILED SLURM job. `main` stays an ordinary function for callers in Python."""
    code = main()
    import logging

    if code == 0 and "TORCHELASTIC_RUN_ID" in os.environ:
        from bonsai.train.distributed import leave_after_other_machines

        leave_after_other_machines()

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 0)


def _ablate(args) -> int:
    from pathlib import Path

    from bonsai.data.stream import DataSourceError
    from bonsai.evaluate.ab_report import table_text
    from bonsai.evaluate.ablate import AblationRequest, ablate

    if args.seeds < 1:
        print("bonsai ablate: --seeds must be at least 1", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config, args.overrides)
        out = Path(args.out or f"{cfg.train.output_dir}-ablate")
        # Each training runs as its own command: a local exclusion list goes to it as an absolute path.
        exclude = str(Path(args.exclude).resolve()) if Path(args.exclude).exists() else args.exclude
        request = AblationRequest(args.config, args.overrides, exclude, args.seeds, out,
                                  args.eval_data, args.generate_limit, args.launch, args.run_timeout,
                                  Path(args.baseline) if args.baseline else None)
        summary = ablate(cfg, request)
    except (ConfigError, DataSourceError) as err:
        print(f"bonsai ablate: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # a training failed; its own log says why
        print(f"bonsai ablate: {err}", file=sys.stderr)
        return 1
    print(table_text(summary))
    print(f"wrote {out / 'ablate.json'} and {out / 'ablate.png'}")
    return 0


def _generate(args) -> int:
    import json

    from bonsai.data.checks import script_language
    from bonsai.evaluate.generation import generate, generation_rows, load_probes
    from bonsai.model.loading import load_for_inference
    from bonsai.data.records import BadRecord, Record

    try:
        decode = _decode_config(args)
        if args.prompt is not None:
            lang = args.lang or script_language(args.prompt) or "en"
            records = [Record(id="prompt", instruction=args.prompt, input=args.input, output="",
                              category=args.category, lang=lang, source_lang=args.source_lang)]
            references = [None]
        else:
            probes = load_probes(args.file)
            records, references = [p.record for p in probes], [p.reference for p in probes]
    except (BadRecord, ValueError, OSError) as err:
        print(f"bonsai: error: {err}", file=sys.stderr)
        return 2
    model, tokenizer = load_for_inference(args.model, args.trust_remote_code)
    if args.template:
        use_template(tokenizer, args.template)
    outputs = generate(model, tokenizer, records, decode)
    if args.prompt is not None:
        print(outputs[0].text)
    else:
        for row in generation_rows(tokenizer, records, outputs, references):
            print(json.dumps(row, ensure_ascii=False))
    return 0


def _init(args) -> int:
    from pathlib import Path

    from bonsai.shipped import init_project

    try:
        written = init_project(Path(args.directory))
    except (FileExistsError, FileNotFoundError) as err:
        print(f"bonsai: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} files into {args.directory}; next: cd {args.directory} && "
          f"WANDB_MODE=offline bonsai train configs/demo.yaml")
    return 0


def _eval(args) -> int:
    from pathlib import Path

    from bonsai.evaluate.compare import compare, table_text

    try:
        summary = compare(args.models, args.data, Path(args.out), _decode_config(args), args.generate_limit,
                          args.trust_remote_code, args.template)
    except (ValueError, OSError) as err:
        print(f"bonsai: error: {err}", file=sys.stderr)
        return 2
    print(table_text(summary))
    print(f"written: {Path(args.out) / 'eval.json'}, {Path(args.out) / 'eval.png'}")
    return 0


def _data(args) -> int:
    from pathlib import Path

    from bonsai.data import audit
    from bonsai.data import tools as datatools
    from bonsai.data.stream import DataSourceError

    try:
        if args.data_command == "audit":
            tokenizer = None
            if args.tokenizer:
                from bonsai.config import ModelConfig
                from bonsai.model.loading import load_tokenizer

                tokenizer = load_tokenizer(args.tokenizer, ModelConfig(name_or_path=args.tokenizer))
            report = audit.audit(args.paths, tokenizer, args.max_length, args.min_output_units)
            audit.write_outputs(report, Path(args.out))
            print(audit.summary_text(report))
            print(f"written: {Path(args.out) / 'audit.json'}, {Path(args.out) / 'audit.png'}")
            worst = report.worst()
            return 1 if worst and audit.SEVERITY_RANK[worst] >= audit.SEVERITY_RANK[args.fail_on] else 0
        if args.data_command == "clean":
            return _clean(args)
        if args.data_command == "convert":
            mapping = dict(item.split("=", 1) for item in args.category_map)
            bad = {k: v for k, v in mapping.items() if v not in CATEGORIES}
            if bad:
                raise datatools.ConvertError(f"--category-map: {bad} maps to no Bonsai category ({', '.join(CATEGORIES)})")
            n = datatools.convert(args.paths, Path(args.out), args.format, mapping, args.category, args.lang, args.id_prefix,
                                  args.drop_system)
            print(f"converted {n} records into {args.out}")
        elif args.data_command == "shard":
            manifest = datatools.shard(args.paths, Path(args.out), args.shards, args.format)
            print(f"{manifest['records']} records in {len(manifest['shards'])} shards under {args.out} (manifest.json)")
        elif args.data_command == "publish":
            print(datatools.publish(args.path, Path(args.out), args.name, args.license, args.push_to_hub))
    except (datatools.ConvertError, DataSourceError, ValueError, OSError) as err:
        print(f"bonsai: error: {err}", file=sys.stderr)
        return 2
    return 0


def _clean(args) -> int:
    from pathlib import Path

    from bonsai.data.exclude import choose, clean_data
    from bonsai.observe.report import find_suspects

    run_dir = Path(args.from_report)
    if not (run_dir / "config.yaml").exists():
        raise FileNotFoundError(f"--from-report {run_dir}: no config.yaml there; give a Bonsai run directory")
    if args.top is not None and args.top < 1:
        raise ValueError(f"--top {args.top}: expected a positive number of records")
    data_path = args.data or load_config(run_dir / "config.yaml").data.path
    chosen = choose(find_suspects(run_dir), args.min_score, args.top)
    if not chosen:
        raise ValueError(f"--from-report {run_dir}: no suspect record{' scores that high' if args.min_score else ''}; "
                         "nothing to leave out (see `bonsai report` for the scores)")
    removed, excluded = clean_data(data_path, chosen, Path(args.out))
    print(f"{removed} record(s) left out of {data_path} -> {args.out} (listed in {excluded})")
    for row in chosen[:10]:
        print(f"  {row['id']} [{row['category']}/{row['lang']}] score {row['score']:.1f}: {row['why']}")
    print(f"train on it: bonsai train CONFIG data.path={args.out}  (or keep the data: data.exclude={excluded})")
    return 0


def _export(args) -> int:
    from pathlib import Path

    from bonsai.train.export import ExportError, export_checkpoint

    try:
        written = export_checkpoint(Path(args.checkpoint), Path(args.out))
    except (ExportError, ConfigError, FileNotFoundError) as err:
        print(f"bonsai: error: {err}", file=sys.stderr)
        return 2
    print("written: " + ", ".join(str(p) for p in written))
    return 0


def _slurm(args) -> int:
    import shlex

    from bonsai.cluster.slurm import SlurmError, SubmitOptions, submit

    fields = ("nodes", "gpus_per_node", "procs_per_node", "partition", "time", "launch_config", "grace_s",
              "max_restarts", "cpus_per_task", "job_name", "sbatch_args")
    opts = SubmitOptions(**{name: getattr(args, name) for name in fields})
    try:
        job = submit(args.config, args.overrides, opts, dry_run=args.dry_run)
    except (SlurmError, ConfigError, OSError) as err:
        print(f"bonsai: error: {err}", file=sys.stderr)
        return 2
    if job.job_id is None:
        print(job.script, end="")
        print(f"# would run: {shlex.join(job.command)}")
        return 0
    print(f"submitted job {job.job_id}: {opts.nodes} node(s) x {opts.processes_per_node} process(es)\n"
          f"  script: {job.command[2]}\n  log:    {job.log}\n  watch:  squeue -j {job.job_id}; tail -f {job.log}")
    return 0


def _env(args) -> int:
    from bonsai.env_report import report_text

    print(report_text())
    return 0


def _report(args) -> int:
    from bonsai.observe.report import summary_text, write_report
    from bonsai.train.lock import live_holder

    out = Path(args.out or args.run_dir)
    try:
        print(summary_text(write_report(args.run_dir, out, live=live_holder(Path(args.run_dir)))))
    except (FileNotFoundError, ConfigError) as err:
        print(f"bonsai: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a read-only or full run directory
        print(f"bonsai: error: cannot write the report into {out} ({err.strerror or err}); "
              f"pass --out DIR to write it elsewhere", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    run()
