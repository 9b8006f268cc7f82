"""Two memos for Apache Beam's graph construction, installed in every process that builds or
runs the pipeline (``pipeline/steps/__init__.py`` calls :func:`install`).

Building this pipeline's graph (~70 ParDos) took ~1.2 s of a 4.3-s run on a small input, and
the driver's whole start is on the critical path of every run. Two Beam functions were most of
it (cProfile of a one-book run, Beam 2.77):

- ``PipelineOptions.view_as(cls)`` builds an ``argparse`` parser and parses the flags again at
  every call: ~590 calls per run (the type checks call it per transform), 0.6 s.
- ``userstate.get_dofn_specs(dofn)`` signature-inspects every method of the DoFn at every
  call: ~580 calls for ~70 DoFns (``is_stateful_dofn``, ``validate_stateful_dofn``,
  ``to_runner_api``, the bundle processors), 1.0 s under the profiler.

Both answers depend only on things that do not change once made: a view is a facade over the
options' shared ``_all_options`` dict (reads and writes go there), and a DoFn's state and timer
parameters are declared in its methods' signatures. Beam's own maintainers proposed the same
two memos (apache/beam pull request 9925, "Memoize expensive introspection functions ...
PipelineOptions.view_as(...) reparsed the arguments every time"), which was never merged.

Safety: a view is reused only for the same options object while its ``_flags`` and
``_all_options`` are still the objects the view was made over; a DoFn's specs are kept per
object (not per class, not per equality) and handed out as fresh sets. Objects that cannot be
weakly referenced are not memoized. ``LONGCTX_BEAM_MEMO=0`` leaves Beam as it is.
"""

from __future__ import annotations

import functools
import os
import weakref

_INSTALLED: list[bool] = []


def _memo_view_as(view_as):
    views: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    @functools.wraps(view_as)
    def memo_view_as(self, cls):
        try:
            mine = views.setdefault(self, {})
        except TypeError:  # not weakly referable or not hashable: Beam's own path
            return view_as(self, cls)
        view = mine.get(cls)
        if (
            view is None
            or view._flags is not self._flags
            or view._all_options is not self._all_options
        ):
            view = mine[cls] = view_as(self, cls)
        return view

    memo_view_as.__wrapped_by_longctx__ = True
    return memo_view_as


def _memo_dofn_specs(get_dofn_specs):
    specs: dict[int, tuple] = {}  # id(dofn) -> (weakref to it, (state specs, timer specs))

    def forget(key):
        return lambda _ref: specs.pop(key, None)

    @functools.wraps(get_dofn_specs)
    def memo_get_dofn_specs(dofn):
        key = id(dofn)
        hit = specs.get(key)
        if hit is not None and hit[0]() is dofn:
            state, timers = hit[1]
        else:
            state, timers = get_dofn_specs(dofn)
            try:
                specs[key] = (weakref.ref(dofn, forget(key)), (frozenset(state), frozenset(timers)))
            except TypeError:  # not weakly referable: not memoized
                return state, timers
        return set(state), set(timers)

    memo_get_dofn_specs.__wrapped_by_longctx__ = True
    return memo_get_dofn_specs


def install() -> bool:
    """Install both memos once per process; returns whether they are in place."""
    if _INSTALLED:
        return _INSTALLED[0]
    if os.environ.get("LONGCTX_BEAM_MEMO", "1") == "0":
        _INSTALLED.append(False)
        return False
    from apache_beam.options import pipeline_options
    from apache_beam.transforms import userstate

    options = pipeline_options.PipelineOptions
    if not getattr(options.view_as, "__wrapped_by_longctx__", False):
        options.view_as = _memo_view_as(options.view_as)
    if not getattr(userstate.get_dofn_specs, "__wrapped_by_longctx__", False):
        userstate.get_dofn_specs = _memo_dofn_specs(userstate.get_dofn_specs)
    _INSTALLED.append(True)
    return True
