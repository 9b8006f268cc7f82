"""``--config pipeline.yaml``: every option of ``pipeline.run`` in a YAML file; flags win.

Keys are option names with ``-`` or ``_`` (``seq-len`` or ``seq_len``); lists for repeatable
options (``books: [a, b]``), ``true``/``false`` for switches (``dedup: false`` is
``--no-dedup``). Beam options go in the same file (``runner: DirectRunner``,
``direct_num_workers: 2``). A key given on the command line replaces the file's value
(for repeatable options too: the file's list is dropped, not merged). An unknown key stops
the run with exit 2 naming it and the nearest known option. Relative paths, inputs and
``output`` alike, are relative to the config file's folder. The key rules are shared with the
trainer's YAML (``schemas/settings.py``).
"""

from __future__ import annotations

from pipeline.config import BuildConfig
from pipeline.errors import UsageError
from schemas.settings import SettingsError, check_keys, path_keys, read_yaml, resolve_paths


def known_flags() -> dict[str, str]:
    """Config key (``_`` form) -> command-line flag, for this project's and Beam's options."""
    import argparse

    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.options import LongctxOptions

    flags = {k: f"--{k}" for k in PipelineOptions([]).get_all_options()}
    parser = argparse.ArgumentParser(add_help=False)
    LongctxOptions._add_argparse_args(parser)
    for action in parser._actions:
        for opt in action.option_strings:
            flags[opt.lstrip("-").replace("-", "_")] = opt
            flags.setdefault(action.dest, opt)
    flags["dedup"] = "--no-dedup"  # dedup: false
    flags["format"] = flags["shard_format"] = "--format"
    return flags


def _given(argv: list[str], flags: dict[str, str]) -> set[str]:
    """Flags present on the command line (as flag strings)."""
    names = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    return {f for f in flags.values() if f in names}


def expand_config(argv: list[str], flags: dict[str, str] | None = None) -> list[str]:
    """``argv`` with the options of its ``--config FILE`` inserted before the flags."""
    if "--config" not in argv and not any(a.startswith("--config=") for a in argv):
        return argv
    flags = flags or known_flags()
    rest, path = [], None
    it = iter(argv)
    for a in it:
        if a == "--config":
            path = next(it, None)
        elif a.startswith("--config="):
            path = a.split("=", 1)[1]
        else:
            rest.append(a)
    if not path:
        raise UsageError("--config needs a YAML file")
    try:
        data = read_yaml(path)
        check_keys(path, data, flags)
    except SettingsError as err:
        raise UsageError(str(err)) from None
    data = resolve_paths(path, data, path_keys(BuildConfig))
    given = _given(rest, flags)
    out: list[str] = [f"--config={path}"]
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        flag = flags[key]
        if key == "dedup":
            value = not value
        if flag in given:
            continue  # the command line wins
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, bool):
                if v:
                    out.append(flag)
                continue
            if v is None:
                continue
            out += [flag, str(v)]
    return out + rest
