"""The project's command-line options (docs/contracts.md section 1) as Beam PipelineOptions.

The flags are the fields of :class:`pipeline.config.BuildConfig` (one table, with groups and
defaults); every other flag (``--runner``, ``--direct_num_workers``, Dataflow/Flink/Spark
options) passes through to Beam unchanged.

Importing this module imports no Beam: :func:`check_values` and :func:`help_text` use plain
argparse, and ``LongctxOptions`` (a ``PipelineOptions`` subclass) is made on first use.
"""

from __future__ import annotations

import functools

from pipeline.config import GROUPS, BuildConfig
from pipeline.errors import UsageError
from schemas.settings import add_arguments, did_you_mean


@functools.cache
def _longctx_options():
    """The ``PipelineOptions`` subclass, made once (Beam finds option classes through
    ``PipelineOptions.__subclasses__()``, so a second class would register the flags twice)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    class LongctxOptions(PipelineOptions):
        @classmethod
        def _add_argparse_args(cls, parser):
            add_arguments(parser, BuildConfig, groups=GROUPS)

    LongctxOptions.__module__ = __name__
    return LongctxOptions


def __getattr__(name: str):
    if name == "LongctxOptions":
        return _longctx_options()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _parser():
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    _longctx_options()

    parser = _BeamArgumentParser(allow_abbrev=False)
    classes = {str(cls): cls for cls in PipelineOptions.__subclasses__()}
    for cls in classes.values():
        cls._add_argparse_args(parser)
    return parser


def check_values(argv: list[str]) -> BuildConfig | None:
    """A bad value (``--seq-len abc``, ``--format csv``, ``--seq-len 10``, ``--overlap`` past
    ``--seq-len``) is one error line naming the flag, before Beam is imported and before Beam's
    parser would print its usage under the name ``run.py``. ``--output`` is checked later,
    with Beam's filesystems. Returns the settings so read (None where a flag looks misspelt:
    ``check_arguments`` reports it once Beam's flags are known)."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m pipeline.run", add_help=False, exit_on_error=False, allow_abbrev=False
    )
    add_arguments(parser, BuildConfig, groups=GROUPS)
    try:
        values, unknown = parser.parse_known_args(argv)
    except argparse.ArgumentError as err:
        raise UsageError(f"{err} (python -m pipeline.run --help)") from None
    ours = [o for a in parser._actions for o in a.option_strings]
    if any(a.startswith("-") and did_you_mean(a.split("=", 1)[0], ours) for a in unknown):
        # perhaps a misspelt project flag (--seq_len): its value is not in ``values``, so a
        # check against the default would name the wrong flag; check_arguments, with Beam's
        # own flags known, names it first
        return None
    return BuildConfig.from_options(values, check_output=False)


def check_arguments(argv: list[str]) -> None:
    """Refuse what Beam would only log and drop: a misspelt flag (``--seq-lenn 5`` would run at
    the default length) or a stray value (``--books a b`` keeps only ``a``; repeat the flag)."""
    parser = _parser()
    _, unknown = parser.parse_known_args(argv)
    for arg in unknown:
        if arg.startswith("-"):
            flag = arg.split("=", 1)[0]
            known = [o for a in parser._actions for o in a.option_strings]
            raise UsageError(
                f"unknown flag {flag}{did_you_mean(flag, known)} "
                "(python -m pipeline.run --help lists them)"
            )
        raise UsageError(
            f"unexpected argument {arg!r}: each flag takes one value; repeat the flag for more "
            "(--books a.txt --books b.txt)"
        )


def help_text() -> str:
    """``python -m pipeline.run --help``: every project flag by group, with its default."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m pipeline.run",
        description="Books and code repositories in, packed Arrow shards out.",
        epilog="Every Apache Beam option passes through (--runner DirectRunner, "
        "--direct_running_mode, --direct_num_workers, Dataflow/Flink/Spark options). Exit "
        "status: 0 complete, 2 bad flag, 3 unusable input, 4 refused shrink, 5 output locked, "
        "6 no disk space, 1 other failure (README 'Exit status').",
    )
    add_arguments(parser, BuildConfig, groups=GROUPS)
    return parser.format_help()
