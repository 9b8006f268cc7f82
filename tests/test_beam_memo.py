"""Beam's graph construction memoized (``pipeline/beam_memo.py``): a real run parses the flags
once per options view and inspects each DoFn once, and what the memos answer is what Beam
answers without them."""

from __future__ import annotations

import copy
import json

import apache_beam as beam
from apache_beam.options.pipeline_options import (
    PipelineOptions,
    StandardOptions,
    TypeOptions,
)
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import userstate
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

import pipeline.steps  # noqa: F401 - installs the memos, as in every pipeline process
from pipeline import beam_memo
from tests.conftest import run_patched

# A whole in_memory run with Beam's two introspections counted where Beam calls them
# (installed before the pipeline's modules, so the memos wrap the counters).
COUNT_RUN = """
import argparse, json, sys
from collections import Counter
from apache_beam.transforms import userstate
calls = Counter()
inspect = userstate.get_dofn_specs
def counted_specs(dofn):
    calls["get_dofn_specs"] += 1
    return inspect(dofn)
userstate.get_dofn_specs = counted_specs
parse = argparse.ArgumentParser.parse_known_args
def counted_parse(self, *args, **kwargs):
    calls["parse_known_args"] += 1
    return parse(self, *args, **kwargs)
argparse.ArgumentParser.parse_known_args = counted_parse
"""


def _counted_run(tmp_path, books_dir, qwen3_dir, memo: str) -> dict:
    args = ["--books", str(books_dir / "kafka-metamorphosis.txt"), "--runner", "DirectRunner"]
    args += ["--tokenizer", str(qwen3_dir), "--output", str(tmp_path / f"out{memo}"), "--quiet"]
    report = 'print(json.dumps({"status": status, **calls}))'
    proc = run_patched(COUNT_RUN, args, report, LONGCTX_BEAM_MEMO=memo)
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert counts["status"] == 0
    return counts


def test_a_run_parses_flags_once_per_view_and_inspects_each_dofn_once(
    tmp_path, books_dir, qwen3_dir
):
    memo = _counted_run(tmp_path, books_dir, qwen3_dir, "1")
    plain = _counted_run(tmp_path, books_dir, qwen3_dir, "0")
    # Beam 2.77 alone: ~600 parses (a view per type check) and ~580 inspections (~8 per DoFn)
    assert plain["parse_known_args"] > 300 and plain["get_dofn_specs"] > 300, plain
    assert memo["parse_known_args"] < plain["parse_known_args"] / 5, (memo, plain)
    assert memo["get_dofn_specs"] < plain["get_dofn_specs"] / 2, (memo, plain)
    # the same bytes either way
    a, b = (json.loads((tmp_path / f"out{m}" / "manifest.json").read_text()) for m in "10")
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]


def test_views_write_through_and_copies_stay_apart():
    assert beam_memo.install()
    assert getattr(PipelineOptions.view_as, "__wrapped_by_longctx__", False)
    options = PipelineOptions(["--runner", "DirectRunner", "--no_pipeline_type_check"])
    first = options.view_as(StandardOptions)
    assert options.view_as(StandardOptions) is first  # the memo
    assert options.view_as(TypeOptions).pipeline_type_check is False
    first.runner = "PortableRunner"  # a write through one view is seen by every view
    assert options.view_as(StandardOptions).runner == "PortableRunner"
    assert options.get_all_options()["runner"] == "PortableRunner"
    copied = copy.deepcopy(options)  # what beam.Pipeline does with its options
    copied.view_as(StandardOptions).runner = "DirectRunner"
    assert copied.view_as(StandardOptions) is not first
    assert options.view_as(StandardOptions).runner == "PortableRunner"
    options._all_options = dict(options._all_options, runner="FlinkRunner")  # replaced: new view
    assert options.view_as(StandardOptions).runner == "FlinkRunner"


class _Stateful(beam.DoFn):
    SEEN = ReadModifyWriteStateSpec("seen", beam.coders.VarIntCoder())

    def process(self, element, seen=beam.DoFn.StateParam(SEEN)):  # noqa: B008 - Beam's way
        count = (seen.read() or 0) + 1
        seen.write(count)
        yield element[0], count


def test_dofn_specs_are_beams_answer_and_a_stateful_dofn_still_runs():
    stateful, plain = _Stateful(), beam.Map(lambda x: x).dofn
    assert userstate.is_stateful_dofn(stateful) and not userstate.is_stateful_dofn(plain)
    state, timers = userstate.get_dofn_specs(stateful)
    assert [s.name for s in state] == ["seen"] and timers == set()
    state.clear()  # a caller that changes the answer does not change the next one
    assert [s.name for s in userstate.get_dofn_specs(stateful)[0]] == ["seen"]
    with BeamTestPipeline() as p:
        got = p | beam.Create([("a", 1), ("a", 2), ("b", 3)]) | beam.ParDo(_Stateful())
        assert_that(got, equal_to([("a", 1), ("a", 2), ("b", 1)]))


class _Plain(beam.DoFn):
    def process(self, element):
        yield element


def test_a_new_dofn_at_a_dead_ones_address_gets_its_own_specs():
    """The memo is per object, not per address: CPython hands a new object the address of one
    just freed, and a plain DoFn must not inherit a stateful one's state spec."""
    reused = 0
    for _ in range(2000):
        stateful = _Stateful()
        assert userstate.is_stateful_dofn(stateful)
        address = id(stateful)
        del stateful
        plain = _Plain()
        if id(plain) == address:
            reused += 1
            assert not userstate.is_stateful_dofn(plain)
            assert userstate.get_dofn_specs(plain) == (set(), set())
    assert reused > 0  # the case this test is about did happen
