"""One configuration system for the pipeline and the trainer.

A settings class is a dataclass whose fields are declared with :func:`option`: the default, the
help text, the flag's group and metavar live on the field, so the field list *is* the table of
flags. Both ``pipeline.config.BuildConfig`` and ``train.config.TrainConfig`` are built this way,
and share the rules:

- a YAML key equals the flag's name (``seq-len`` or ``seq_len`` for ``--seq-len``);
- flags on the command line win over the YAML file, which wins over the defaults;
- an unknown key or flag is an error that suggests the nearest known name;
- relative paths in a YAML file are relative to the file's folder (inputs and outputs alike).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
from collections.abc import Iterable
from dataclasses import field, fields
from typing import Any

import yaml


class SettingsError(ValueError):
    """A settings file or value that cannot be used; the message names the key or flag."""


def option(
    default: Any,
    help: str,
    *,
    group: str = "",
    metavar: str | None = None,
    choices: tuple | None = None,
    flag: str | None = None,
    path: str = "",
    repeatable: bool = False,
    switch: bool = False,
):
    """A settings field. ``flag`` overrides the flag name derived from the field name
    (``seq_len`` -> ``--seq-len``); ``path``: ``"path"`` for a YAML value relative to the
    file's folder, ``"hub"`` for a path or Hub id (resolved only when it exists there);
    ``repeatable``: a list (the flag may be given several times); ``switch``: a flag without
    a value that sets the field to ``not default``."""
    meta = dict(
        help=help,
        group=group,
        metavar=metavar,
        choices=choices,
        flag=flag,
        path=path,
        repeatable=repeatable,
        switch=switch,
    )
    if repeatable:
        return field(default_factory=lambda: tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def default_of(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """`` (did you mean --seq-len?)`` for the nearest candidate, or ``""``: the one flag that
    starts with ``word`` (``--seq``: ``--seq-len``, not ``--seed``), else the closest spelling."""
    candidates = list(candidates)
    longer = [c for c in candidates if c.startswith(word + "-")]
    if len(longer) == 1:
        return f" (did you mean {longer[0]}?)"
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _describe_default(value) -> str:
    if value in (None, "", ()):
        return "none"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def add_arguments(parser: argparse.ArgumentParser, cls, *, groups: dict[str, str] | None = None):
    """Add one flag per field of ``cls`` to ``parser``, in argument groups by the fields'
    ``group`` (titles from ``groups``), with the default shown in each help text."""
    made: dict[str, Any] = {}
    for f in fields(cls):
        meta, name = f.metadata, f.metadata.get("group") or "options"
        if name not in made:
            made[name] = parser.add_argument_group((groups or {}).get(name, name))
        target = made[name]
        default = default_of(f)
        help_ = f"{meta['help']} (default {_describe_default(default)})"
        if meta.get("switch"):  # a flag without a value: off unless given; no "(default True)"
            action = "store_false" if default else "store_true"
            target.add_argument(
                flag_of(f), dest=f.name, action=action, default=default, help=meta["help"]
            )
            continue
        kw: dict[str, Any] = dict(dest=f.name, help=help_, metavar=meta.get("metavar"))
        if meta.get("choices"):
            kw["choices"] = meta["choices"]
            kw["metavar"] = None
        if meta.get("repeatable"):
            target.add_argument(flag_of(f), action="append", default=[], **kw)
            continue
        kind = _value_type(f, default)
        if kind is not str:
            kw["type"] = kind
        target.add_argument(flag_of(f), default=default, **kw)


def _value_type(f: dataclasses.Field, default):
    annotation = str(f.type)
    if "float" in annotation:
        return float
    if "int" in annotation and "str" not in annotation:
        return int
    return (
        type(default) if isinstance(default, int | float) and not isinstance(default, bool) else str
    )


def yaml_keys(cls) -> dict[str, str]:
    """YAML key (``_`` form) -> flag, for the fields of ``cls``."""
    known = {}
    for f in fields(cls):
        flag = flag_of(f)
        known[f.name] = flag
        known[flag.lstrip("-").replace("-", "_")] = flag
    return known


def read_yaml(path: str) -> dict:
    """A YAML settings file as a mapping; raises SettingsError naming the file."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except OSError as err:
        raise SettingsError(f"--config {path}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise SettingsError(f"--config {path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise SettingsError(f"--config {path}: must be a mapping of option: value")
    return data


def check_keys(path: str, data: dict, known: dict[str, str]) -> None:
    """Every key of ``data`` must name a known flag; else SettingsError with a suggestion."""
    for raw in data:
        key = str(raw).replace("-", "_")
        if key not in known or key == "config":
            hint = did_you_mean(key, [k for k in known if k != "config"])
            raise SettingsError(f"--config {path}: unknown option {raw!r}{hint}")


def resolve_paths(path: str, data: dict, keys: dict[str, str]) -> dict:
    """``data`` with relative paths made relative to the YAML file's folder. ``keys`` maps a
    key to ``"path"`` (always resolved) or ``"hub"`` (a Hub id such as ``Qwen/Qwen3-8B`` or a
    path: resolved only when it names something there)."""
    base = os.path.dirname(os.path.abspath(path))
    out = {}
    for raw, value in data.items():
        how = keys.get(str(raw).replace("-", "_"))
        if how and value is not None:
            if isinstance(value, list):
                value = [_resolve(base, v, how) for v in value]
            else:
                value = _resolve(base, value, how)
        out[raw] = value
    return out


def _resolve(base: str, value, how: str):
    if not isinstance(value, str) or not value or os.path.isabs(value) or "://" in value:
        return value
    joined = os.path.join(base, value)
    return joined if how == "path" or os.path.exists(joined) else value


def path_keys(cls) -> dict[str, str]:
    """Field name -> "path" / "hub" for the fields declared with ``path=``."""
    return {f.name: f.metadata["path"] for f in fields(cls) if f.metadata.get("path")}
