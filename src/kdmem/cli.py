"""The ``kdmem`` command: parses arguments and calls the Python API, nothing else."""

from __future__ import annotations

import argparse
import errno
import logging
import sys
import traceback
from pathlib import Path

import yaml

# Only light modules here: each command imports what it runs, so --help loads no torch.
from kdmem.config import INFERENCE_DTYPES as DTYPES
from kdmem.config import available_presets, config_to_dict, load_config
from kdmem.errors import USER_ERRORS, ConfigError

INTERNAL_ERROR = (
    "kdmem: internal error (a bug): please report it to the kdmem maintainers (see README.md), with the "
    "traceback above and the command you ran."
)


def _describe_os_error(error: OSError) -> str:
    where = f" ({error.filename})" if error.filename else ""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"no space left on device{where}. Nothing half-written was kept: outputs are written to a temporary "
            "name and renamed when whole. Free some space and run the same command again; finished stages are kept."
        )
    return f"{error.strerror or error}{where}. Check the path and its permissions; finished stages are kept."


def _at_least_one(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:  # int() of a text that is no integer
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _share(text: str) -> float:
    """An argparse type: a number in (0, 1]."""
    try:
        value = float(text)
    except ValueError:  # float() of a text that is no number
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdmem", description="Memorization dynamics in knowledge distillation.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run",
        help="train teacher, baseline, soft and hard students; measure memorization; print the headline table",
        description="Run the paper's pipeline. With no CONFIG and no --preset it runs the embedded default "
        "experiment.",
    )
    run.add_argument("config", nargs="?", help="YAML config file (keys as in kdmem.config.ExperimentConfig)")
    run.add_argument("--preset", help=f"named preset: {', '.join(available_presets())}")
    run.add_argument("--output", "-o", help="output folder (default: runs/NAME)")
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="when --output holds a run of another config, recompute the stages the change affects (default: refuse)",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the config and print the plan and a compute estimate; train nothing",
    )
    run.add_argument(
        "--print-config",
        action="store_true",
        help="print the config CONFIG, --preset and the overrides resolve to, as YAML (as OUT/config.yaml holds it); "
        "run nothing",
    )
    run.add_argument(
        "--rehearse",
        action="store_true",
        help="run the whole pipeline of CONFIG on shrunken look-alikes of its models (random weights, real "
        "vocabularies, tokenizers and dtypes) in minutes on a CPU, into runs/NAME-rehearsal; checks every stage's "
        "outputs",
    )
    run.add_argument(
        "--lookalikes",
        metavar="DIR",
        help="with --rehearse: a folder holding ORG/NAME/config.json and tokenizer files for the config's models, "
        "read instead of the hub",
    )
    run.add_argument(
        "--parameters",
        metavar="MODEL=N,...",
        default="",
        help="with --dry-run: parameter counts to use instead of looking them up, e.g. teacher=8.19e9,student=2.03e9",
    )
    run.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. data.num_examples=200")

    extract = commands.add_parser(
        "extract",
        help="measure discoverable memorization of one model on one data source",
        description="Greedy decoding from a prefix must reproduce the next suffix tokens exactly; verdicts equal "
        "model.generate's, computed with forward passes and early exit.",
    )
    extract.add_argument("--model", required=True, help="hub name or save_pretrained folder")
    extract.add_argument(
        "--data",
        required=True,
        help="a Parquet file with input_ids (e.g. OUT/data/train.parquet), a text file or folder, "
        "builtin:python-docs, or a hub dataset",
    )
    extract.add_argument("--prefix-len", type=int, default=50)
    extract.add_argument("--suffix-len", type=int, default=50)
    extract.add_argument("--output", "-o", required=True, help="Parquet file to write")
    extract.add_argument("--seq-len", type=int, help="sequence length when --data is text (default: prefix + suffix)")
    extract.add_argument("--num-examples", type=int, help="audit at most this many sequences")
    extract.add_argument("--text-field", default="text")
    extract.add_argument("--subset", help="hub dataset config name")
    extract.add_argument("--split", default="train")
    extract.add_argument(
        "--batch-size", type=int, help="sequences per forward pass (default: the largest that fits in memory)"
    )
    extract.add_argument(
        "--full", action="store_true", help="also suffix_token_accuracy, suffix_loss and prefix curves (one full pass)"
    )
    extract.add_argument(
        "--prefix-lens", default="", help="with --full: comma-separated prefix lengths, e.g. 10,20,50,100"
    )
    extract.add_argument("--margin-tolerance", type=float, default=1e-3)
    extract.add_argument("--shard-size", type=int, default=10_000, help="examples per resumable output shard")
    extract.add_argument(
        "--approximate-sample",
        type=int,
        default=0,
        metavar="N",
        help="also decode N random examples with greedy generate: token match rate, edit distance, longest common run",
    )
    extract.add_argument(
        "--approximate-ids",
        default="",
        metavar="IDS",
        help="... and these examples: comma-separated example ids, or a file with one id per line",
    )
    extract.add_argument("--seed", type=int, default=0, help="seed of the approximate sample")
    extract.add_argument(
        "--dtype", default="float32", choices=DTYPES, help="dtype the model is audited in (paper configs: bfloat16)"
    )
    extract.add_argument("--trust-remote-code", action="store_true")

    membership = commands.add_parser(
        "membership",
        help="membership inference: per-example scores on members and non-members, ROC-AUC and TPR at 1%% FPR",
        description="Scores: loss, zlib_ratio, min_k_prob, reference_ratio; formulas in the output's Parquet "
        "metadata.",
    )
    membership.add_argument("--model", required=True, help="hub name or save_pretrained folder")
    membership.add_argument(
        "--members",
        required=True,
        help="Parquet file with input_ids the model was trained on (e.g. OUT/data/train.parquet)",
    )
    membership.add_argument(
        "--non-members",
        required=True,
        help="Parquet file with input_ids it was not trained on (e.g. OUT/data/validation.parquet)",
    )
    membership.add_argument(
        "--reference", help="reference model for reference_ratio (e.g. the base before fine-tuning)"
    )
    membership.add_argument("--min-k", type=_share, default=0.2, help="k of Min-K%% Prob, in (0, 1]")
    membership.add_argument("--batch-size", type=_at_least_one, default=64)
    membership.add_argument("--output", "-o", required=True, help="Parquet file to write")
    membership.add_argument(
        "--dtype", default="float32", choices=DTYPES, help="dtype the models are scored in (paper configs: bfloat16)"
    )
    membership.add_argument("--trust-remote-code", action="store_true")

    analyze = commands.add_parser(
        "analyze",
        help="explain a finished run's memorization: overlaps, features, predictor, mechanism, sweeps",
        description="Writes OUT/analysis.json, OUT/features.parquet (if missing), OUT/categories.parquet and "
        "OUT/figures/ (PNG and SVG).",
    )
    analyze.add_argument("output", help="a run folder written by `kdmem run`")
    analyze.add_argument(
        "--repeats", type=_at_least_one, default=100, help="repetitions of the predictor's 1:3 protocol (paper: 100)"
    )

    predict = commands.add_parser(
        "predict",
        help="score any data for the risk that a distilled student memorizes it, before distillation",
        description="Fits the predictor on a finished, analyzed run and scores DATA with a teacher (and baseline).",
    )
    predict.add_argument("run", help="an analyzed run folder (it holds features.parquet)")
    predict.add_argument(
        "--data",
        required=True,
        help="a Parquet file with input_ids, a text file or folder, builtin:python-docs, or a hub dataset",
    )
    predict.add_argument("--output", "-o", required=True, help="Parquet file to write: example_id, risk, features")
    predict.add_argument("--student", default="soft", choices=["soft", "hard"], help="whose memorization to predict")
    predict.add_argument("--teacher", help="teacher model (default: the run's)")
    predict.add_argument("--baseline", help="baseline model (default: the run's)")
    predict.add_argument(
        "--teacher-only", action="store_true", help="use teacher perplexity and zlib entropy only (no baseline)"
    )
    predict.add_argument("--seq-len", type=int, help="sequence length when --data is text (default: the run's)")
    predict.add_argument("--num-examples", type=int)
    predict.add_argument("--text-field", default="text")
    predict.add_argument("--subset")
    predict.add_argument("--split", default="train")
    report = commands.add_parser(
        "report",
        help="write OUT/report.html (one self-contained page) and OUT/report.md for a finished run",
        description="kdmem run writes the report at its end; this rewrites it, e.g. after kdmem analyze.",
    )
    report.add_argument("output", help="a run folder written by `kdmem run`")

    compare = commands.add_parser(
        "compare",
        help="side-by-side headline tables and overlaps of memorized sets between runs",
        description="Runs on the same text are matched by example id, or by decoded text when tokenizers differ.",
    )
    compare.add_argument("runs", nargs="+", metavar="OUT", help="two or more run folders")
    compare.add_argument("--json", help="also write the comparison to this JSON file")
    return parser


def _compare(args) -> None:
    from kdmem.analysis.compare import compare_many
    from kdmem.io import write_json_atomic
    from kdmem.report.headline import comparison_table

    if len(args.runs) < 2:
        raise ConfigError(f"kdmem compare needs two or more run folders, got only {args.runs[0]}.")
    comparison = compare_many(args.runs)
    if args.json:
        write_json_atomic(Path(args.json), comparison)
    print(comparison_table(comparison))


def _membership(args) -> None:
    from kdmem.config import DataConfig
    from kdmem.data import load_sequences
    from kdmem.memorization.membership import audit_membership, write_membership
    from kdmem.models import load_model, load_tokenizer

    remote = args.trust_remote_code
    tokenizer = load_tokenizer(args.model, trust_remote_code=remote)
    members, non_members = (
        load_sequences(DataConfig(source=path, num_examples=None, validation_examples=0), tokenizer)
        for path in (args.members, args.non_members)
    )
    model = load_model(args.model, trust_remote_code=remote, dtype=args.dtype)
    reference = load_model(args.reference, trust_remote_code=remote, dtype=args.dtype) if args.reference else None
    scores, metrics = audit_membership(model, members, non_members, tokenizer, reference, args.batch_size, args.min_k)
    write_membership(Path(args.output), scores, metrics, args.min_k)
    shown = ", ".join(f"{name} AUC {value['auc']:.3f}" for name, value in metrics.items() if isinstance(value, dict))
    print(f"{metrics['members']} members, {metrics['non_members']} non-members: {shown}")


def _predict(args) -> None:
    from kdmem.analysis.analyze import predict
    from kdmem.io import write_parquet_atomic

    data = _audited_data(args, args.seq_len or load_config(Path(args.run) / "config.yaml").data.seq_len)
    risk = predict(
        args.run,
        data,
        student=args.student,
        teacher=args.teacher,
        baseline=args.baseline,
        teacher_only=args.teacher_only,
    )
    write_parquet_atomic(Path(args.output), risk)
    mean, top = risk["risk"].mean(), risk["risk"].quantile(0.99)
    print(f"scored {len(risk)} sequences; mean risk {mean:.4f}, 99th percentile {top:.4f}; wrote {args.output}")


def _parameter_counts(text: str) -> dict[str, float]:
    counts = {}
    for pair in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = pair.partition("=")
        try:
            counts[name] = float(value)
        except ValueError:
            raise ConfigError(f"--parameters takes MODEL=N pairs such as teacher=8.19e9; got {pair!r}.") from None
    return counts


def _split_config_and_overrides(args) -> None:
    # argparse cannot tell "kdmem run a=b" (override) from "kdmem run file.yaml"; an "=" decides.
    if args.config and "=" in args.config:
        args.overrides.insert(0, args.config)
        args.config = None


def _audited_data(args, seq_len: int):
    """The data of ``--data`` and its flags, every sequence audited (no held-out split)."""
    from kdmem.config import DataConfig

    return DataConfig(
        source=args.data,
        subset=args.subset,
        split=args.split,
        text_field=args.text_field,
        seq_len=seq_len,
        num_examples=args.num_examples,
        validation_examples=0,
    )


def _example_ids(text: str) -> list[str]:
    """``a,b,c`` or the path of a file with one id per line."""
    if text and Path(text).is_file():
        return [line.strip() for line in Path(text).read_text(encoding="utf-8").splitlines() if line.strip()]
    return [part.strip() for part in text.split(",") if part.strip()]


def _extract(args) -> None:
    from kdmem.config import ExtractionConfig
    from kdmem.memorization.audit import AuditConfig, audit, one_line_summary

    try:
        prefix_lens = [int(p) for p in args.prefix_lens.split(",") if p.strip()]
    except ValueError:
        raise ConfigError(f"--prefix-lens must be comma-separated integers, got {args.prefix_lens!r}.") from None
    data = _audited_data(args, args.seq_len or args.prefix_len + args.suffix_len)
    cfg = AuditConfig(
        model=args.model,
        data=data,
        extraction=ExtractionConfig(
            prefix_len=args.prefix_len,
            suffix_len=args.suffix_len,
            batch_size=args.batch_size,
            full=args.full,
            prefix_lens=prefix_lens,
            margin_tolerance=args.margin_tolerance,
            approximate_sample=args.approximate_sample,
            approximate_ids=_example_ids(args.approximate_ids),
            seed=args.seed,
        ),
        shard_size=args.shard_size,
        trust_remote_code=args.trust_remote_code,
        dtype=args.dtype,
    )
    verdicts = audit(cfg, args.output)
    from kdmem.io import process_state

    if process_state().is_main_process:
        print(one_line_summary(verdicts))


def _run(args) -> None:
    _split_config_and_overrides(args)
    config = load_config(args.config, preset=args.preset, overrides=args.overrides)
    if args.print_config:
        print(yaml.safe_dump(config_to_dict(config), sort_keys=False), end="")
    elif args.dry_run:
        from kdmem.plan import format_plan, plan

        print(format_plan(plan(config, _parameter_counts(args.parameters))))
    elif args.rehearse:
        from kdmem.rehearsal import format_rehearsal, rehearse

        print(format_rehearsal(rehearse(config, args.output, lookalikes=args.lookalikes)))
    else:
        from kdmem.pipeline import run

        run(config, args.output, overwrite=args.overwrite)


def _leave_process_group() -> None:
    """Under ``accelerate launch``, leave the process group before exit: a gloo group left to
    interpreter exit can abort the process."""
    import torch.distributed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    # argparse takes `run`'s positional overrides only before its first flag; key=value pairs
    # after a flag (kdmem run CONFIG --dry-run data.seq_len=128) are overrides too.
    args, extra = parser.parse_known_args(argv)
    if (
        extra
        and getattr(args, "command", None) == "run"
        and all("=" in item and not item.startswith("-") for item in extra)
    ):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    try:
        if args.command == "run":
            _run(args)
        elif args.command == "extract":
            _extract(args)
        elif args.command == "membership":
            _membership(args)
        elif args.command == "analyze":
            from kdmem.analysis.analyze import analyze

            analyze(args.output, repeats=args.repeats)
        elif args.command == "predict":
            _predict(args)
        elif args.command == "report":
            from kdmem.report import write_report

            html, markdown = write_report(args.output)
            print(f"wrote {html} ({html.stat().st_size / 1e6:.2f} MB) and {markdown}")
        elif args.command == "compare":
            _compare(args)
        _leave_process_group()
        return 0
    except USER_ERRORS as error:
        if args.debug:
            raise
        print(f"kdmem: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a full disk, a folder that cannot be written
        if args.debug:
            raise
        print(f"kdmem: error: {_describe_os_error(error)}", file=sys.stderr)
        return 2
    except Exception:  # not bad input: a bug, shown with its traceback
        if args.debug:
            raise
        traceback.print_exc()
        print(INTERNAL_ERROR, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
