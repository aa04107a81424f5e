"""The `bonsai` command: parse, build, run, clean up. Errors a user can fix exit 2 with one clear message."""

from __future__ import annotations

import argparse
import sys

from bonsai.config import ConfigError, load_config, to_yaml


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bonsai", description="Supervised fine-tuning of small language models.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser(
        "train",
        help="fine-tune a model (run under `accelerate launch` for several processes)",
        description="Train from CONFIG; running it again on the same output_dir resumes from the latest checkpoint.",
    )
    train.add_argument("config", help="YAML config, e.g. configs/demo.yaml")
    train.add_argument("overrides", nargs="*", metavar="section.key=value", help="e.g. train.lr=1e-4")
    train.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    report = sub.add_parser(
        "report",
        help="loss curve, instability events and suspect records of a run",
        description="Writes RUN_DIR/report.png and RUN_DIR/report.json and prints a summary.",
    )
    report.add_argument("run_dir")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "train":
        return _train(args)
    if args.command == "report":
        return _report(args)
    raise AssertionError(args.command)


def _train(args) -> int:
    from bonsai.checkpoint import CheckpointMismatch
    from bonsai.distributed import WorldSizeMismatch, launcher_world_size
    from bonsai.stream import DataSourceError
    from bonsai.trainer import DataError, TrainingUnstable, train

    try:
        cfg = load_config(args.config, args.overrides)
        cfg.check_world_size(launcher_world_size())
        if args.dry_run:
            print(to_yaml(cfg), end="")
            return 0
        return train(cfg)
    except (ConfigError, DataSourceError, DataError, CheckpointMismatch, WorldSizeMismatch) as err:
        print(f"bonsai: error: {err}", file=sys.stderr)
        return 2
    except TrainingUnstable as err:
        print(f"bonsai: training stopped: {err}", file=sys.stderr)
        return 3


def _report(args) -> int:
    from bonsai.report import summary_text, write_report

    try:
        print(summary_text(write_report(args.run_dir)))
    except (FileNotFoundError, ConfigError) as err:
        print(f"bonsai: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
