"""The ``kdmem`` command: parses arguments and calls the Python API, nothing else."""

from __future__ import annotations

import argparse
import logging
import sys

from kdmem.config import ConfigError, available_presets, load_config
from kdmem.data import DataError
from kdmem.models import ModelError

USER_ERRORS = (ConfigError, DataError, ModelError, FileNotFoundError)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdmem", description="Memorization dynamics in knowledge distillation.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run",
        help="train teacher, baseline, soft and hard students; measure memorization; print the headline table",
        description="Run the paper's pipeline. With no CONFIG and no --preset it runs the embedded default experiment.",
    )
    run.add_argument("config", nargs="?", help="YAML config file (keys as in kdmem.config.ExperimentConfig)")
    run.add_argument("--preset", help=f"named preset: {', '.join(available_presets())}")
    run.add_argument("--output", "-o", help="output folder (default: runs/NAME)")
    run.add_argument("--overwrite", action="store_true", help="discard a run with a different config in --output")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. data.num_examples=200")
    return parser


def _split_config_and_overrides(args) -> None:
    # argparse cannot tell "kdmem run a=b" (override) from "kdmem run file.yaml"; an "=" decides.
    if args.config and "=" in args.config:
        args.overrides.insert(0, args.config)
        args.config = None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        if args.command == "run":
            from kdmem.pipeline import run

            _split_config_and_overrides(args)
            config = load_config(args.config, preset=args.preset, overrides=args.overrides)
            run(config, args.output, overwrite=args.overwrite)
        return 0
    except USER_ERRORS as error:
        if args.debug:
            raise
        print(f"kdmem: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
