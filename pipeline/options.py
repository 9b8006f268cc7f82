"""The project's own command-line options (CONTRACTS.md section 1) as Beam PipelineOptions.

Every other flag (``--runner``, ``--direct_num_workers``, Dataflow/Flink/Spark options) passes
through to Beam unchanged.
"""

from __future__ import annotations

import os

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import remote
from pipeline.errors import UsageError  # noqa: F401  (re-exported: raised by the checks here)


class LongctxOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--books",
            action="append",
            default=[],
            metavar="PATH",
            help="a book file (.txt, .md, .html, .htm, .epub) or a folder searched "
            "recursively; repeatable",
        )
        parser.add_argument(
            "--repos",
            action="append",
            default=[],
            metavar="PATH",
            help="one code repository: a folder, or a .zip / .tar.gz archive; repeatable",
        )
        parser.add_argument(
            "--repos-root",
            dest="repos_root",
            action="append",
            default=[],
            metavar="PATH",
            help="a folder whose immediate subfolders are repositories; repeatable",
        )
        parser.add_argument(
            "--documents",
            action="append",
            default=[],
            metavar="PATH",
            help="JSONL or Parquet file of ready documents (text, optional id/kind/path); repeatable",
        )
        parser.add_argument(
            "--text-field",
            dest="text_field",
            default="text",
            metavar="NAME",
            help="the field of --documents records that holds the text (default: text)",
        )
        parser.add_argument(
            "--tokenizer",
            default=None,
            metavar="NAME_OR_PATH",
            help="tokenizer.json file, folder with Hugging Face tokenizer files, or Hub id "
            "(default: the bundled Qwen3 tokenizer)",
        )
        parser.add_argument(
            "--seq-len",
            dest="seq_len",
            type=int,
            default=65536,
            metavar="TOKENS",
            help="target sample length in tokens (default 65536)",
        )
        parser.add_argument(
            "--overlap",
            type=int,
            default=0,
            metavar="TOKENS",
            help="tokens shared by consecutive windows of a document longer than "
            "--seq-len, 0 <= N < seq-len (default 0)",
        )
        parser.add_argument(
            "--output", default="out", metavar="DIR", help="output folder (default out)"
        )
        parser.add_argument(
            "--format",
            dest="shard_format",
            default="arrow",
            choices=("arrow", "parquet"),
            help="shard file format (default arrow: Arrow IPC stream)",
        )
        parser.add_argument(
            "--max-file-mb",
            dest="max_file_mb",
            type=float,
            default=32.0,
            metavar="MB",
            help="files larger than this are rejected as too_large (default 32 MiB)",
        )
        parser.add_argument(
            "--shard-mb",
            dest="shard_mb",
            type=float,
            default=256.0,
            metavar="MB",
            help="target size of the input_ids of one shard (default 256 MiB)",
        )
        parser.add_argument(
            "--boundary-slack",
            dest="boundary_slack",
            type=int,
            default=None,
            metavar="TOKENS",
            help="a window of a long document may end up to this many tokens early so the next "
            "one starts at a chapter or paragraph (default seq-len/32; 0: plain cuts)",
        )
        parser.add_argument(
            "--mix",
            default=None,
            metavar="KIND=W,...",
            help="token shares per kind, e.g. book=0.4,code=0.6; kinds not named are left out "
            "(default: keep everything)",
        )
        parser.add_argument(
            "--seed",
            type=int,
            default=0,
            metavar="INT",
            help="seed of the --mix document selection (default 0)",
        )
        parser.add_argument(
            "--min-dependency-score",
            dest="min_dependency_score",
            type=float,
            default=None,
            metavar="SCORE",
            help="leave out documents whose long-dependency score is below this; documents "
            "too short to score (< 45,056 tokens) are kept (default: no filter)",
        )
        parser.add_argument(
            "--fill-gaps",
            action="store_true",
            default=False,
            help="cut pieces of documents longer than --seq-len (split anyway) to fill the free "
            "room of other samples: fewer samples, down to about the lower bound, at the price "
            "of shorter pieces; documents that fit are never cut (needs --overlap 0)",
        )
        parser.add_argument(
            "--no-dedup",
            dest="dedup",
            action="store_false",
            default=True,
            help="keep exact and near-duplicate files (default: keep the first copy only)",
        )
        parser.add_argument(
            "--incremental",
            action="store_true",
            default=False,
            help="reuse the tokenized documents of the last run in --output whose text has not "
            "changed (cache in OUT/.cache); implies --overwrite",
        )
        parser.add_argument(
            "--trust-remote-code",
            dest="trust_remote_code",
            action="store_true",
            default=False,
            help="let transformers run code from the tokenizer's Hub repository (default off)",
        )
        parser.add_argument(
            "--config",
            default=None,
            metavar="YAML",
            help="read options from a YAML file; flags on the command line win",
        )
        parser.add_argument(
            "--quiet",
            action="store_true",
            default=False,
            help="print nothing but errors (no progress, no summary)",
        )
        parser.add_argument(
            "--log-level",
            dest="log_level",
            default="WARNING",
            choices=("DEBUG", "INFO", "WARNING", "ERROR"),
            help="logging level of the pipeline and Beam (default WARNING)",
        )
        parser.add_argument(
            "--overwrite",
            action="store_true",
            default=False,
            help="replace a finished output already in --output",
        )
        parser.add_argument(
            "--shrink-threshold",
            dest="shrink_threshold",
            type=float,
            default=0.5,
            metavar="FRACTION",
            help="--incremental refuses (exit 4) when documents or tokens fall below this "
            "fraction of the last run's (default 0.5)",
        )
        parser.add_argument(
            "--allow-shrink",
            dest="allow_shrink",
            action="store_true",
            default=False,
            help="let an --incremental run publish a dataset below --shrink-threshold",
        )
        parser.add_argument(
            "--skip-space-check",
            dest="skip_space_check",
            action="store_true",
            default=False,
            help="do not refuse a run whose estimated output exceeds the free disk space",
        )


def check_arguments(argv: list[str]) -> None:
    """Refuse what Beam would only log and drop: a misspelt flag (``--seq-lenn 5`` would run at
    the default length) or a stray value (``--books a b`` keeps only ``a``; repeat the flag)."""
    from apache_beam.options.pipeline_options import _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False)
    classes = {str(cls): cls for cls in PipelineOptions.__subclasses__()}
    for cls in classes.values():
        cls._add_argparse_args(parser)
    _, unknown = parser.parse_known_args(argv)
    for arg in unknown:
        if arg.startswith("-"):
            raise UsageError(
                f"unknown flag {arg.split('=', 1)[0]} (python -m pipeline.run --help lists them)"
            )
        raise UsageError(
            f"unexpected argument {arg!r}: each flag takes one value; repeat the flag for more "
            "(--books a.txt --books b.txt)"
        )


def boundary_slack(opts: LongctxOptions) -> int:
    """The effective --boundary-slack in tokens."""
    from transforms.windowing import default_slack

    return default_slack(opts.seq_len) if opts.boundary_slack is None else opts.boundary_slack


def mix_weights(opts: LongctxOptions) -> dict[str, float] | None:
    """--mix as normalised weights (validated by :func:`validate`)."""
    from transforms.mixture import parse_mix

    return parse_mix(opts.mix)


def validate(opts: LongctxOptions) -> None:
    """Check the project's options before any work; raises UsageError naming the flag/path."""
    if opts.seq_len <= 0:
        raise UsageError(f"--seq-len must be a positive number of tokens, got {opts.seq_len}")
    if not 0 <= opts.overlap < opts.seq_len:
        raise UsageError(
            f"--overlap must satisfy 0 <= overlap < --seq-len ({opts.seq_len}), got {opts.overlap}"
        )
    if opts.max_file_mb <= 0:
        raise UsageError(f"--max-file-mb must be > 0, got {opts.max_file_mb}")
    if opts.shard_mb <= 0:
        raise UsageError(f"--shard-mb must be > 0, got {opts.shard_mb}")
    if opts.boundary_slack is not None and opts.boundary_slack < 0:
        raise UsageError(f"--boundary-slack must be >= 0 tokens, got {opts.boundary_slack}")
    if opts.fill_gaps and opts.overlap:
        raise UsageError(
            f"--fill-gaps with --overlap {opts.overlap}: cut pieces would not overlap; use one or the other"
        )
    from transforms.mixture import MixError, parse_mix

    try:
        weights = parse_mix(opts.mix)
    except MixError as err:
        raise UsageError(str(err)) from None
    if weights:
        unknown = sorted(set(weights) - {"book", "code"})
        if unknown:
            raise UsageError(f"--mix: unknown kind {', '.join(unknown)} (kinds: book, code)")
    if not 0 < opts.shrink_threshold <= 1:
        raise UsageError(f"--shrink-threshold must be in (0, 1], got {opts.shrink_threshold}")
    if not opts.text_field:
        raise UsageError("--text-field must name a field")
    # Missing input paths are unusable inputs (exit 3), checked by guard.check_inputs.
    for path in opts.repos_root:
        if not remote.is_remote(path) and os.path.lexists(path) and not os.path.isdir(path):
            raise UsageError(f"--repos-root {path}: not a folder")
    out = opts.output

    if remote.is_remote(out):  # gs://, s3://, hdfs://...: through Beam's filesystems
        try:
            finished = FileSystems.exists(FileSystems.join(out, "manifest.json"))
        except ValueError as err:  # no filesystem registered for the scheme
            raise UsageError(f"--output {out}: {err}") from None
    else:
        if os.path.exists(out) and not os.path.isdir(out):
            raise UsageError(f"--output {out}: exists and is not a folder")
        finished = os.path.exists(os.path.join(out, "manifest.json"))
    if finished and not (opts.overwrite or opts.incremental):
        raise UsageError(
            f"--output {out}: holds a finished output (manifest.json); pass --overwrite to replace it"
        )
