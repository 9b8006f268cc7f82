"""The pipeline's settings: one frozen :class:`BuildConfig`, built once from the flags (and the
YAML file, ``pipeline/config_file.py``), validated once, and passed whole to every step.

Its fields are the table of flags (``schemas/settings.py``): ``python -m pipeline.run --help``
lists them by group with their defaults, and a YAML key is a flag's name. Adding an option is
one field here, plus its use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

from pipeline import remote
from pipeline.errors import UsageError
from schemas.layout import MANIFEST
from schemas.settings import option
from transforms.inputs.reading import FILE_ORDERS, ReadSettings
from transforms.samples.plan import PACKINGS, PlanSettings

GROUPS = {
    "inputs": "inputs",
    "tokenization": "tokenization",
    "samples": "samples",
    "ablation": "ablation switches (prepare the same corpus naively, for A/B comparisons)",
    "output": "output",
    "run": "run and logging",
}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# The shortest --seq-len: shorter samples are a mistyped flag, not a long-context corpus.
MIN_SEQ_LEN = 64


def console_log_level(quiet: bool, log_level: str) -> str:
    """The logging level of the run's processes: --log-level, or ERROR under --quiet (Beam's
    warnings included) unless a level was asked for."""
    return "ERROR" if quiet and log_level == "WARNING" else log_level


@dataclass(frozen=True)
class BuildConfig:
    # inputs
    books: tuple[str, ...] = option(
        (),
        "a book file (.txt, .md, .html, .htm, .epub) or a folder searched recursively; repeatable",
        group="inputs",
        metavar="PATH",
        repeatable=True,
        path="path",
    )
    repos: tuple[str, ...] = option(
        (),
        "one code repository: a folder, or a .zip / .tar.gz archive; repeatable",
        group="inputs",
        metavar="PATH",
        repeatable=True,
        path="path",
    )
    repos_root: tuple[str, ...] = option(
        (),
        "a folder whose immediate subfolders are repositories; repeatable",
        group="inputs",
        metavar="PATH",
        repeatable=True,
        path="path",
    )
    documents: tuple[str, ...] = option(
        (),
        "JSONL or Parquet file of ready documents (text, optional id/kind/path); repeatable",
        group="inputs",
        metavar="PATH",
        repeatable=True,
        path="path",
    )
    hf_dataset: tuple[str, ...] = option(
        (),
        "a Hugging Face dataset: a save_to_disk folder, a .jsonl/.parquet/.csv data file, or "
        "a Hub id, with an optional :SPLIT (default train); streamed; repeatable",
        group="inputs",
        metavar="NAME_OR_PATH[:SPLIT]",
        repeatable=True,
        path="hub",
    )
    text_field: str = option(
        "text",
        "the field of --documents records that holds the text",
        group="inputs",
        metavar="NAME",
    )
    documents_kind: str = option(
        "book",
        "the kind of --documents records that have no 'kind' field",
        group="inputs",
        choices=("book", "code"),
    )
    max_file_mb: float = option(
        32.0,
        "files larger than this (MiB) are rejected as too_large",
        group="inputs",
        metavar="MB",
    )
    dedup: bool = option(
        True,
        "keep exact and near-duplicate files (default: keep the first copy only)",
        group="inputs",
        flag="--no-dedup",
        switch=True,
    )
    dedup_within_repository: str = option(
        "off",
        "duplicates between files of one repository: off (a repository keeps its structure), "
        "exact (true copies only) or near (MinHash >= 0.8, as across repositories)",
        group="inputs",
        choices=("off", "exact", "near"),
    )
    # tokenization
    tokenizer: str | None = option(
        None,
        "tokenizer.json file, folder with Hugging Face tokenizer files, or Hub id "
        "(none: the bundled Qwen3 tokenizer)",
        group="tokenization",
        metavar="NAME_OR_PATH",
        path="hub",
    )
    trust_remote_code: bool = option(
        False,
        "let transformers run code from the tokenizer's Hub repository",
        group="tokenization",
        switch=True,
    )
    # samples
    seq_len: int = option(
        65536,
        f"sample length in tokens, >= {MIN_SEQ_LEN}",
        group="samples",
        metavar="TOKENS",
    )
    overlap: int = option(
        0,
        "tokens shared by consecutive windows of a document longer than --seq-len, "
        "0 <= N < seq-len",
        group="samples",
        metavar="TOKENS",
    )
    boundary_slack: int | None = option(
        None,
        "a window of a long document may end up to this many tokens early so the next one "
        "starts at a chapter or paragraph (none: seq-len/32; 0: plain cuts)",
        group="samples",
        metavar="TOKENS",
    )
    mix: str | None = option(
        None,
        "token shares per kind, e.g. book=0.4,code=0.6; kinds not named are left out "
        "(none: keep everything)",
        group="samples",
        metavar="KIND=W,...",
    )
    seed: int = option(
        0,
        "seed of the --mix selection, the --eval-fraction split and --file-order shuffled",
        group="samples",
        metavar="INT",
    )
    min_dependency_score: str | None = option(
        None,
        "leave out documents whose long-dependency score is below this: one number for every "
        "kind, or per kind (book=0.005,code=0.05; a kind not named is not filtered). Scores "
        "differ by kind (code ~0.08-0.17, novels ~0.01-0.03): docs/data.md. Documents too "
        "short to score (< 45,056 tokens) are kept (none: no filter)",
        group="samples",
        metavar="SCORE|KIND=S,...",
    )
    fill_gaps: bool = option(
        False,
        "cut pieces of documents longer than --seq-len (split anyway) to fill the free room of "
        "other samples: fewer samples, down to about the lower bound, at the price of shorter "
        "pieces; documents that fit are never cut (needs --overlap 0)",
        group="samples",
        switch=True,
    )
    eval_fraction: float = option(
        0.0,
        "share of tokens held out for validation as whole documents (seeded by --seed, stable "
        "across runs): shards/validation-*",
        group="samples",
        metavar="F",
    )
    # ablation switches
    file_order: str = option(
        "dependency",
        "order of a repository's files: dependency (imports first), path, shuffled "
        "(seeded, per repository); for ablations",
        group="ablation",
        choices=FILE_ORDERS,
    )
    packing: str = option(
        "related",
        "related (same source, then kind and language, packed together) or plain (best-fit "
        "with no relatedness); for ablations",
        group="ablation",
        choices=PACKINGS,
    )
    window_boundaries: str = option(
        "chapter",
        "chapter: windows of long documents start at chapter/paragraph/line starts within "
        "--boundary-slack; none: plain cuts every seq-len tokens; for ablations",
        group="ablation",
        choices=("chapter", "none"),
    )
    # output
    output: str = option("out", "output folder", group="output", metavar="DIR", path="path")
    shard_format: str = option(
        "arrow",
        "shard file format: Arrow IPC stream or Parquet (zstd)",
        group="output",
        flag="--format",
        choices=("arrow", "parquet"),
    )
    shard_mb: float = option(
        256.0, "target size of the input_ids of one shard, MiB", group="output", metavar="MB"
    )
    overwrite: bool = option(
        False, "replace a finished output already in --output", group="output", switch=True
    )
    incremental: bool = option(
        False,
        "reuse the tokenized documents of the last run in --output whose text has not changed "
        "(cache in OUT/.cache); implies --overwrite",
        group="output",
        switch=True,
    )
    shrink_threshold: float = option(
        0.5,
        "--incremental refuses (exit 4) when documents or tokens fall below this fraction of "
        "the last run's",
        group="output",
        metavar="FRACTION",
    )
    allow_shrink: bool = option(
        False,
        "let an --incremental run publish a dataset below --shrink-threshold",
        group="output",
        switch=True,
    )
    skip_space_check: bool = option(
        False,
        "do not refuse a run whose estimated output exceeds the free disk space",
        group="output",
        switch=True,
    )
    # run and logging
    config: str | None = option(
        None,
        "read options from a YAML file; flags on the command line win",
        group="run",
        metavar="YAML",
    )
    quiet: bool = option(
        False,
        "print errors and the one-line summary only (no progress, no banner)",
        group="run",
        switch=True,
    )
    log_level: str = option(
        "WARNING", "logging level of the pipeline and Beam", group="run", choices=LOG_LEVELS
    )

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def from_options(cls, opts, *, check_output: bool = True) -> BuildConfig:
        """From parsed options (a ``LongctxOptions`` view, or any object with the fields as
        attributes); validated (without ``check_output``: the values only, no look at
        ``--output``, so no Beam import). Raises UsageError naming the flag."""
        values = {}
        for f in fields(cls):
            value = getattr(opts, f.name)
            values[f.name] = tuple(value) if isinstance(value, list) else value
        config = cls(**values)
        config.check_values()
        if check_output:
            config._check_output()
        return config

    def validate(self) -> None:
        """Check every value before any work; raises UsageError naming the flag or path."""
        self.check_values()
        self._check_output()

    def check_values(self) -> None:
        """The checks of :meth:`validate` that need neither Beam nor ``--output``: the values
        and how they combine (the command line makes them before Beam is imported)."""
        from transforms.samples.mixture import MixError, parse_mix

        checks = (
            (
                self.seq_len > 0,
                f"--seq-len must be a positive number of tokens, got {self.seq_len}",
            ),
            (
                self.seq_len <= 0 or self.seq_len >= MIN_SEQ_LEN,
                f"--seq-len must be at least {MIN_SEQ_LEN} tokens, got {self.seq_len} (a "
                "sample of a few tokens has next to nothing to predict: the trainer's loss "
                "would be 0)",
            ),
            (
                0 <= self.overlap < self.seq_len,
                f"--overlap must satisfy 0 <= overlap < --seq-len ({self.seq_len}), "
                f"got {self.overlap}",
            ),
            (self.max_file_mb > 0, f"--max-file-mb must be > 0, got {self.max_file_mb}"),
            (self.shard_mb > 0, f"--shard-mb must be > 0, got {self.shard_mb}"),
            (
                self.boundary_slack is None or self.boundary_slack >= 0,
                f"--boundary-slack must be >= 0 tokens, got {self.boundary_slack}",
            ),
            (
                not (self.fill_gaps and self.overlap),
                f"--fill-gaps with --overlap {self.overlap}: cut pieces would not overlap; use "
                "one or the other",
            ),
            (
                0 < self.shrink_threshold <= 1,
                f"--shrink-threshold must be in (0, 1], got {self.shrink_threshold}",
            ),
            (
                0 <= self.eval_fraction < 1,
                f"--eval-fraction must be in [0, 1), got {self.eval_fraction}",
            ),
            (
                not (self.window_boundaries == "none" and self.boundary_slack),
                f"--window-boundaries none cuts windows every --seq-len tokens: it contradicts "
                f"--boundary-slack {self.boundary_slack}",
            ),
            (bool(self.text_field), "--text-field must name a field"),
        )
        for ok, message in checks:
            if not ok:
                raise UsageError(message)
        try:
            weights = parse_mix(self.mix)
        except MixError as err:
            raise UsageError(str(err)) from None
        self.min_scores  # noqa: B018  (raises UsageError for a bad --min-dependency-score)
        unknown = sorted(set(weights or {}) - {"book", "code"})
        if unknown:
            raise UsageError(f"--mix: unknown kind {', '.join(unknown)} (kinds: book, code)")
        for path in self.repos_root:
            if not remote.is_remote(path) and os.path.lexists(path) and not os.path.isdir(path):
                raise UsageError(f"--repos-root {path}: not a folder")

    def _check_output(self) -> None:
        from apache_beam.io.filesystems import FileSystems

        out = self.output
        if remote.is_remote(out):  # gs://, s3://, hdfs://...: through Beam's filesystems
            try:
                finished = FileSystems.exists(FileSystems.join(out, MANIFEST))
            except ValueError as err:  # no filesystem registered for the scheme
                raise UsageError(f"--output {out}: {err}") from None
        else:
            if os.path.exists(out) and not os.path.isdir(out):
                raise UsageError(f"--output {out}: exists and is not a folder")
            finished = os.path.exists(os.path.join(out, MANIFEST))

        def same(path: str) -> bool:
            if remote.is_remote(out) or remote.is_remote(path):
                return remote.is_remote(out) and path.rstrip("/") == out.rstrip("/")
            return os.path.realpath(path) == os.path.realpath(out)

        for flag, paths in (("--books", self.books), ("--repos", self.repos),
                            ("--repos-root", self.repos_root)):  # fmt: skip
            for path in paths:
                if same(path):
                    raise UsageError(
                        f"--output {out}: the same folder as {flag} {path}; a run would read "
                        "its own output (outputs inside an input folder are skipped, so "
                        "nothing would be left to read): choose an --output outside it"
                    )
        from pipeline.output import foreign_files

        foreign = foreign_files(out)
        if foreign:
            shown = ", ".join(foreign[:5]) + (
                f" and {len(foreign) - 5} more" if foreign[5:] else ""
            )
            raise UsageError(
                f"--output {out}: a run would replace {shown}, which no run of this pipeline "
                "wrote there; choose a new or empty folder, or move them (--overwrite "
                "replaces only a pipeline output)"
            )
        if finished and not (self.overwrite or self.incremental):
            raise UsageError(
                f"--output {out}: holds a finished output (manifest.json); pass --overwrite to "
                "replace it"
            )

    # -- derived settings --------------------------------------------------------------------

    @property
    def demo(self) -> bool:
        """No input named: the run uses the embedded demo corpus."""
        return not (
            self.books or self.repos or self.repos_root or self.documents or self.hf_dataset
        )

    @property
    def console_log_level(self) -> str:
        return console_log_level(self.quiet, self.log_level)

    @property
    def slack(self) -> int:
        """The effective --boundary-slack in tokens (0 with --window-boundaries none)."""
        from transforms.samples.windowing import default_slack

        if self.window_boundaries == "none":
            return 0
        return default_slack(self.seq_len) if self.boundary_slack is None else self.boundary_slack

    @property
    def min_scores(self) -> dict[str, float] | None:
        """--min-dependency-score per kind (one number: the same for book and code)."""
        return parse_min_scores(self.min_dependency_score)

    @property
    def mix_weights(self) -> dict[str, float] | None:
        from transforms.samples.mixture import parse_mix

        return parse_mix(self.mix)

    @property
    def samples_per_shard(self) -> int:
        return max(1, int(self.shard_mb * 2**20) // (4 * self.seq_len))

    @property
    def read_settings(self) -> ReadSettings:
        return ReadSettings(
            max_file_bytes=int(self.max_file_mb * 2**20),
            text_field=self.text_field,
            documents_kind=self.documents_kind,
            file_order=self.file_order,
            seed=self.seed,
        )

    @property
    def plan_settings(self) -> PlanSettings:
        return PlanSettings(
            seq_len=self.seq_len,
            overlap=self.overlap,
            samples_per_shard=self.samples_per_shard,
            mix=self.mix_weights,
            seed=self.seed,
            min_score=self.min_scores,
            fill_gaps=self.fill_gaps,
            packing=self.packing,
            eval_fraction=self.eval_fraction,
        )

    def effective(self, beam_options: dict) -> dict:
        """The full effective configuration, as the manifest records it."""

        def _abs(path: str) -> str:
            return path if remote.is_remote(path) else os.path.abspath(path)

        return {
            "books": [_abs(p) for p in self.books],
            "repos": [_abs(p) for p in self.repos],
            "repos_root": [_abs(p) for p in self.repos_root],
            "documents": [_abs(p) for p in self.documents],
            "hf_dataset": list(self.hf_dataset),
            "text_field": self.text_field,
            "documents_kind": self.documents_kind,
            "demo_corpus": self.demo,
            "tokenizer": self.tokenizer,
            "seq_len": self.seq_len,
            "overlap": self.overlap,
            "output": self.output,
            "format": self.shard_format,
            "max_file_mb": self.max_file_mb,
            "shard_mb": self.shard_mb,
            "overwrite": self.overwrite,
            "boundary_slack": self.slack,
            "mix": self.mix_weights,
            "seed": self.seed,
            "min_dependency_score": self.min_scores,
            "dedup": self.dedup,
            "dedup_within_repository": self.dedup_within_repository,
            "fill_gaps": self.fill_gaps,
            "eval_fraction": self.eval_fraction,
            "file_order": self.file_order,
            "packing": self.packing,
            "window_boundaries": self.window_boundaries,
            "trust_remote_code": self.trust_remote_code,
            "incremental": self.incremental,
            "shrink_threshold": self.shrink_threshold,
            "allow_shrink": self.allow_shrink,
            "config": os.path.abspath(self.config) if self.config else None,
            "beam_options": beam_options,
        }


FIELD_NAMES = frozenset(f.name for f in fields(BuildConfig))
KINDS = ("book", "code")


def parse_min_scores(value: str | float | None) -> dict[str, float] | None:
    """``"0.02"`` -> ``{"book": 0.02, "code": 0.02}``; ``"book=0.005,code=0.05"`` -> that."""
    if value in (None, ""):
        return None
    text = str(value).strip()
    flag = "--min-dependency-score"
    try:
        if "=" not in text:
            return dict.fromkeys(KINDS, float(text))
        out = {}
        for part in text.split(","):
            kind, _, number = part.partition("=")
            if kind.strip() not in KINDS:
                raise UsageError(f"{flag}: unknown kind {kind.strip()!r} (kinds: book, code)")
            out[kind.strip()] = float(number)
        return out
    except ValueError:
        raise UsageError(
            f"{flag} {text}: expected a number or KIND=SCORE,... (book=0.005,code=0.05)"
        ) from None
