"""Each Beam composite of pipeline/steps/ on small in-memory inputs, with TestPipeline and
assert_that (the real runner, the real Qwen3 tokenizer, real Arrow files)."""

from __future__ import annotations

import collections
import json
import math
import os
import shutil
import time

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline import token_store
from pipeline.config import BuildConfig
from pipeline.discover import discover, read_source
from pipeline.runners import RunnerTraits, make_runner
from pipeline.steps.common import DOCUMENTS, MAIN, REJECTS, STATS, SUMMARY, Collect
from pipeline.steps.plan import CutSegments, PlanSamples
from pipeline.steps.read import ReadDocuments
from pipeline.steps.tokenize import Tokenize
from pipeline.steps.write import WriteRunFiles, WriteShards
from tests.conftest import STDLIB
from transforms.documents import Reject, TextDocument, TokenizedDocument
from transforms.inputs.reading import ReadSettings
from transforms.samples.plan import PlanSettings

BOOK_TEXT = (
    "Chapter One\n\nIt was a bright cold day in April, and the wind swept the dust of the "
    "streets into little spirals; nobody in the long street looked up at the grey sky.\n\n"
    "Winston made for the stairs. The lift was seldom working, and the hallway smelt of boiled "
    "cabbage and old rag mats.\n\nThe clocks were striking."
)


def _pipeline() -> BeamTestPipeline:
    options = PipelineOptions(["--runner", "DirectRunner"])
    return BeamTestPipeline(runner=make_runner(options), options=options)


@pytest.mark.parametrize("side_inputs", [True, False], ids=["side-input", "join"])
def test_read_documents_keeps_books_and_rejects_empty_and_duplicate(tmp_path, side_inputs):
    """The duplicates reach their documents by a side input, or by a join (the DaskRunner's
    way, ``side_inputs=False``): the same documents kept, the same rejects."""
    books = tmp_path / "books"
    books.mkdir()
    (books / "a.txt").write_text(BOOK_TEXT)
    (books / "b.txt").write_text("A different book.\n\nWith its own second paragraph.\n")
    (books / "copy-of-a.txt").write_text(BOOK_TEXT)
    (books / "empty.txt").write_text("   \n")
    sources, _ = discover(books=[str(books)])
    with _pipeline() as p:
        read = (
            p
            | beam.Create(sources)
            | ReadDocuments(ReadSettings(), dedup=True, side_inputs=side_inputs)
        )
        assert_that(
            read[MAIN] | "Ids" >> beam.Map(lambda d: d.doc_id),
            equal_to(["book/a", "book/b"]),
            label="Kept",
        )
        assert_that(
            read[REJECTS] | "Reasons" >> beam.Map(lambda r: (r.path.rsplit("/", 1)[-1], r.reason)),
            equal_to([("copy-of-a.txt", "duplicate"), ("empty.txt", "empty")]),
            label="Rejected",
        )


def _side_inputs(pipeline) -> list[str]:
    """The labels of the transforms of ``pipeline`` that read a side input."""
    found = []

    class Visitor(beam.pipeline.PipelineVisitor):
        def visit_transform(self, node):
            if node.side_inputs:
                found.append(node.full_label)

    pipeline.visit(Visitor())
    return found


@pytest.mark.parametrize("values", [[], ["a"], list("abcdefghij")], ids=["empty", "one", "ten"])
def test_collect_gives_one_list_of_everything(values):
    """``Collect`` gives exactly one list (``[]`` for no element) and reads no side input:
    Beam 2.77's DaskRunner runs the whole graph above a side input again for it (the corpus
    was read and tokenized once more per collect), and DirectRunner's state cache walks every
    object of one to weigh it."""
    with _pipeline() as p:
        got = p | beam.Create(values) | Collect()
        assert_that(got | beam.Map(sorted), equal_to([sorted(values)]))
        assert _side_inputs(p) == []


def _labels(pipeline) -> list[str]:
    found = []

    class Visitor(beam.pipeline.PipelineVisitor):
        def visit_transform(self, node):
            found.append(node.full_label)

    pipeline.visit(Visitor())
    return found


def _dataset_graph(
    tmp_path, qwen3_dir, discovered, runner: RunnerTraits, source_groups, dedup=True
) -> beam.Pipeline:
    """A pipeline holding the run's whole graph (``BuildDataset``) over ``discovered``
    (``discover``'s sources and rejects), built, not run."""
    from pipeline.steps import BuildDataset

    sources, rejects = discovered
    config = BuildConfig(
        tokenizer=str(qwen3_dir), seq_len=512, output=str(tmp_path / "out"), dedup=dedup
    )
    p = beam.Pipeline(options=PipelineOptions(["--runner", "DirectRunner"]))
    _ = p | BuildDataset(
        config=config,
        sources=sources,
        discovery_rejects=rejects,
        staging=str(tmp_path / "staging"),
        runner=runner,
        source_groups=source_groups,
    )
    return p


def _build_graph(tmp_path, qwen3_dir, side_inputs: bool, grouped=False) -> tuple[list, list]:
    """The run's whole graph on one book and one repository, not run: the labels of its
    transforms, and of those that read a side input."""
    books = tmp_path / "books"
    books.mkdir(parents=True)
    (books / "a.txt").write_text(BOOK_TEXT)
    sources, rejects = discover(books=[str(books)], repos=[str(STDLIB / "json")])
    p = _dataset_graph(
        tmp_path,
        qwen3_dir,
        (sources, rejects),
        RunnerTraits(side_inputs_once=side_inputs),
        [sources[:1], sources[1:]] if grouped else None,
    )
    try:
        return _labels(p), _side_inputs(p)
    finally:  # Beam removes its temporary folder when a pipeline runs; this one never does
        shutil.rmtree(p.local_tempdir, ignore_errors=True)


def test_the_graph_for_dask_reads_no_side_input(tmp_path, qwen3_dir):
    """``side_inputs_once=False`` (what the run gives BuildDataset on DaskRunner,
    ``pipeline.runners.runner_traits``): no step of the whole graph reads a side
    input. The default graph reads one (duplicate removal's drops), so the check can fail."""
    assert _build_graph(tmp_path / "a", qwen3_dir, side_inputs=False)[1] == []
    assert _build_graph(tmp_path / "b", qwen3_dir, side_inputs=True)[1] != []


def _dask_shuffle_tasks(
    tmp_path, qwen3_dir, books_dir, partitions, dedup=False
) -> tuple[int, list[int]]:
    """The whole graph (``BuildDataset`` as the run builds it for DaskRunner: no side input,
    the sources one group each) translated to a dask graph the way Beam 2.77's DaskRunner
    does, not run: its tasks, and for each of its shuffles its ``shuffle-split`` tasks (one
    for each pair of partitions a GroupByKey goes over), largest first."""
    pytest.importorskip("dask")
    pytest.importorskip("distributed", reason="pip install -e '.[test]' brings dask")
    from apache_beam.runners.dask.dask_runner import DaskRunner
    from apache_beam.runners.dask.overrides import dask_overrides

    from pipeline.runners import register_dask_translations, translation_settings

    discovered = discover(
        books=[str(books_dir)], repos=[str(STDLIB / "json"), str(STDLIB / "email")]
    )
    sources = discovered[0]
    dask = RunnerTraits(finish_bundle_outputs=False, side_inputs_once=False, partitions=partitions)
    p = _dataset_graph(tmp_path, qwen3_dir, discovered, dask, [[s] for s in sources], dedup)
    q = None
    try:
        register_dask_translations()
        # as Pipeline.run does for a runner without the Fn API: through the runner API and
        # back (the primitive is pickled, and must still be found in the translations)
        q = beam.Pipeline.from_runner_api(
            p.to_runner_api(use_fake_coders=True), p.runner, p.options
        )
        q.replace_all(dask_overrides())
        visitor = DaskRunner.to_dask_bag_visitor({"npartitions": len(sources)})
        # the shuffle a dask.distributed client gets (without one dask shuffles on disk)
        with translation_settings(PipelineOptions(["--runner", "DaskRunner"])):
            q.visit(visitor)
        names = [
            str(k[0] if isinstance(k, tuple) else k)
            for k in list(visitor.bags.values())[-1].__dask_graph__()
        ]
        shuffles = collections.Counter(n for n in names if n.startswith("shuffle-split"))
        return len(names), sorted(shuffles.values(), reverse=True)
    finally:
        shutil.rmtree(p.local_tempdir, ignore_errors=True)
        if q is not None:
            shutil.rmtree(q.local_tempdir, ignore_errors=True)


def test_dasks_shuffles_after_the_tokenize_step_go_over_few_partitions(
    tmp_path, qwen3_dir, books_dir
):
    """Issue 20 (DaskRunner at 16 workers): each GroupByKey went over every partition the
    sources were in, added up through each Flatten (a task per pair of partitions): 16,703
    tasks at 32 partitions, 13,174 of them the four shuffles' after the tokenize step. With
    ``partitions`` the small collections are gathered into one partition first
    (``Repartition``), so the four shuffles are over at most three partitions each."""
    n = len(discover(books=[str(books_dir)], repos=[str(STDLIB / "json")])[0]) + 1
    assert n >= 10
    tasks, shuffles = _dask_shuffle_tasks(tmp_path / "a", qwen3_dir, books_dir, n)
    before, shuffles_before = _dask_shuffle_tasks(tmp_path / "b", qwen3_dir, books_dir, None)
    assert len(shuffles) == 4 and max(shuffles) <= 3 * 3, shuffles
    assert len(shuffles_before) == 4 and min(shuffles_before) >= n * n, shuffles_before
    assert tasks < before / 5, (tasks, before)
    # with duplicate removal the signatures are gathered into sqrt(n) partitions, and the
    # texts are joined with their drops where they are (BroadcastJoin): the join of the
    # texts was a shuffle over every partition, the texts themselves moving (n * n tasks)
    _, deduped = _dask_shuffle_tasks(tmp_path / "c", qwen3_dir, books_dir, n, dedup=True)
    bands = math.isqrt(n) ** 2
    assert len(deduped) == 5 and bands in deduped, deduped
    assert max(deduped) <= max(bands, 3 * 3), deduped


def test_lpt_bins_balance_sizes_over_workers():
    from transforms.balance import lpt_bins

    sizes = [90, 10, 80, 10, 70, 10, 60, 10]  # by count every other one: 300 against 40
    bins = lpt_bins(sizes, 2)
    loads = [sum(s for s, b in zip(sizes, bins, strict=True) if b == k) for k in (0, 1)]
    assert sorted(loads) == [170, 170]
    assert lpt_bins(sizes, 2) == bins  # the same inputs, the same bins
    assert lpt_bins([5], 4) == [0] and lpt_bins([], 3) == []
    assert lpt_bins([0] * 6, 3) == [0, 1, 2, 0, 1, 2]  # unknown or empty: dealt out by count
    with pytest.raises(ValueError, match="at least 1"):
        lpt_bins(sizes, 0)


def test_guided_groups_shrink_as_they_go_and_hold_every_item_once():
    """DaskRunner on a cluster of this machine: the groups are taken in order by whichever
    partition starts next, so the first are large and the last the smallest (the workers end
    close together); each item once, each group at least one, largest items first."""
    from transforms.balance import guided_groups

    sizes = [(i * 37) % 41 + 1 for i in range(60)]  # all different, not in order
    groups = guided_groups(sizes, 16, 2)
    assert len(groups) == 16 and all(groups)
    assert sorted(i for g in groups for i in g) == list(range(60))
    flat = [i for g in groups for i in g]
    assert flat == sorted(range(60), key=lambda i: (-sizes[i], i))  # largest first
    totals = [sum(sizes[i] for i in g) for g in groups]
    # the first group a quarter of the whole (half a worker's share of 2), the last ones small
    assert totals[0] >= sum(sizes) / 4 and max(totals[-4:]) < totals[0] / 10, totals
    assert totals[:4] == sorted(totals[:4], reverse=True)
    assert guided_groups(sizes, 16, 2) == groups  # the same inputs, the same groups
    assert guided_groups([0, 0, 0], 2, 1) == [[0], [1, 2]]  # the last takes what is left
    assert guided_groups([5], 4, 2) == [[0]] and guided_groups([], 3, 1) == []
    with pytest.raises(ValueError, match="at least 1"):
        guided_groups(sizes, 0, 2)


def test_a_dask_worker_shares_the_drivers_folder_only_on_its_machine_and_user(tmp_path):
    """The group queue's folder is made in the driver's temporary folder: used only where each
    worker sees that very folder (same boot, device and inode: not a container's own /tmp, not
    a tunnelled cluster's loopback) and may enter it."""
    from pipeline.run_folders import boot
    from pipeline.runners import sees_this_folder

    st = os.stat(tmp_path)
    here = (str(tmp_path), st.st_dev, st.st_ino, boot(), os.getuid())
    assert sees_this_folder(*here)
    assert not sees_this_folder(here[0], st.st_dev, st.st_ino + 1, *here[3:])  # another /tmp
    assert not sees_this_folder(*here[:3], "another-boot", os.getuid())
    assert not sees_this_folder(str(tmp_path / "gone"), *here[1:])
    if os.getuid() != 0:  # root may enter any user's folder
        assert not sees_this_folder(*here[:4], os.getuid() + 1)


def test_a_partition_takes_the_next_group_as_it_starts_whatever_its_index():
    """``ClaimGroupFn``: the tickets run in the scheduler's order (not by index); the first to
    run takes the first (largest) group, and a ticket run again takes the same group."""
    from pipeline.source_queue import SourceQueue
    from pipeline.steps.read import ClaimGroupFn

    queue = SourceQueue.of_groups([["a", "b"], ["c"], ["d"]])
    try:
        claim = ClaimGroupFn(queue)
        assert [list(claim.process(t)) for t in (2, 0, 2, 1)] == [
            ["a", "b"],
            ["c"],
            ["a", "b"],
            ["d"],
        ]
        assert list(claim.process(3)) == []  # no group left
        assert queue.claimed() == {"0": 2, "1": 0, "2": 1}
    finally:
        queue.remove()


def test_sources_given_in_groups_are_not_reshuffled(tmp_path, qwen3_dir):
    """DaskRunner gets the sources in groups of about equal size, one partition each
    (``source_groups``): no Reshuffle deals them out again at random. Elsewhere the Reshuffle
    spreads them (DirectRunner's queue aside)."""
    grouped, _ = _build_graph(tmp_path / "a", qwen3_dir, side_inputs=False, grouped=True)
    plain, _ = _build_graph(tmp_path / "b", qwen3_dir, side_inputs=False)
    assert not any("SpreadSources" in label for label in grouped)
    assert "BuildDataset/Ungroup" in grouped
    assert any("SpreadSources" in label for label in plain)


def test_dask_is_the_runner_given_a_graph_for_dask():
    """``runner_traits``: DaskRunner (by alias or class path) gets no side input, no batch
    emitted from finish_bundle and the gathered shuffles, its shards
    spread over the sources' groups (else ``--dask_npartitions``, else a few a core); every
    other runner gets the defaults."""
    pytest.importorskip("dask")
    from dask.system import CPU_COUNT

    from pipeline.runners import DASK, GROUPS_PER_THREAD, runner_traits

    for runner in (DASK, "DaskRunner"):
        traits = runner_traits(PipelineOptions(["--runner", runner]))
        assert traits == RunnerTraits(False, False, GROUPS_PER_THREAD * CPU_COUNT), runner
        assert runner_traits(PipelineOptions(["--runner", runner]), [[1], [2], [3]]).partitions == 3
    given = PipelineOptions(["--runner", "DaskRunner", "--dask_npartitions=5"])
    assert runner_traits(given).partitions == 5
    for runner in ("DirectRunner", "PortableRunner", "DataflowRunner"):
        assert runner_traits(PipelineOptions(["--runner", runner])) == RunnerTraits(), runner


def _claim_all(queue_args, ticket, pause, out, start):
    """One worker process taking sources from a queue, ``pause`` seconds of 'work' each, once
    every worker has started (``start``: a barrier; a spawned process takes ~1 s to start on a
    busy machine, and the first one up would otherwise take everything)."""
    import time

    from pipeline.source_queue import SourceQueue

    start.wait(timeout=120)
    taken = []
    for doc_id in SourceQueue(*queue_args).claims(ticket):
        taken.append(doc_id)
        time.sleep(pause)
    out.put((ticket, taken))


def test_a_free_worker_takes_the_next_source_largest_first(tmp_path):
    """Issue 20: fixed shares (by count, then by size) ended the 16 workers' read + tokenize
    stage 4-7 s apart; now each worker takes the next source when it is free. Three real
    processes, one of them 10x slower per source: every source is taken exactly once, the
    slow one takes few, and each takes its sources largest first."""
    import multiprocessing

    from pipeline.source_queue import SourceQueue

    ids = [f"book/{i:02d}" for i in range(40)]
    sizes = [(i * 37) % 41 for i in range(40)]  # all different, not in id order
    queue = SourceQueue.create(ids, sizes, 3)
    try:
        assert queue.order == tuple(sorted(ids, key=lambda d: -sizes[ids.index(d)]))
        ctx = multiprocessing.get_context("spawn")
        out, start = ctx.Queue(), ctx.Barrier(3)
        args = (queue.folder, queue.order, queue.tickets)
        procs = [
            ctx.Process(target=_claim_all, args=(args, t, 0.5 if t == 0 else 0.05, out, start))
            for t in range(3)
        ]
        for p in procs:
            p.start()
        taken = dict(out.get(timeout=120) for _ in procs)
        for p in procs:
            p.join(timeout=60)
        everything = [d for t in taken.values() for d in t]
        assert sorted(everything) == sorted(ids)  # exactly once each
        assert len(taken[0]) < min(len(taken[1]), len(taken[2])), taken
        for t in taken.values():  # each worker's in the queue's order: largest first
            assert t == sorted(t, key=queue.order.index)
        assert queue.claimed() == {d: t for t, ds in taken.items() for d in ds}
    finally:
        queue.remove()
    assert not os.path.exists(queue.folder)


def test_a_ticket_run_again_takes_back_its_own_sources_first(tmp_path):
    """A bundle that failed and is run again (its outputs discarded by the runner) must read
    the sources its first run had taken: no other ticket will."""
    from pipeline.source_queue import SourceQueue

    queue = SourceQueue.create(["a", "b", "c", "d", "e"], [5, 4, 3, 2, 1], 2)
    try:
        first = queue.claims(0)
        assert [next(first), next(first)] == ["a", "b"]
        first.close()  # the failed attempt
        assert list(queue.claims(1)) == ["c", "d", "e"]
        assert list(queue.claims(0)) == ["a", "b"]  # taken back; nothing else is left
        with pytest.raises(ValueError, match="at least 1"):
            SourceQueue.create(["a"], [1], 0)
    finally:
        queue.remove()


def test_multi_processing_workers_read_the_sources_they_took(tmp_path):
    """The wiring: with a ``SourceQueue`` each of the 2 workers of DirectRunner
    ``multi_processing`` reads exactly the sources its ticket took, every source once."""
    import json

    from pipeline.runners import static_workers
    from pipeline.source_queue import SourceQueue

    books = tmp_path / "books"
    books.mkdir()
    for i in range(8):
        body = "\n\n".join(f"Paragraph {j} of book {i}, with some words." for j in range(1, 200))
        (books / f"b{i}.txt").write_text(body[: 1000 * (i + 1)])
    sources, _ = discover(books=[str(books)])
    options = PipelineOptions(
        ["--runner", "DirectRunner", "--direct_running_mode", "multi_processing",
         "--direct_num_workers", "2"]
    )  # fmt: skip
    assert static_workers(options) == 2
    assert static_workers(PipelineOptions(["--runner", "DirectRunner"])) is None
    assert static_workers(PipelineOptions(["--runner", "SwitchingDirectRunner",
        "--direct_running_mode", "multi_processing", "--direct_num_workers", "2"])) == 2  # fmt: skip
    queue = SourceQueue.create([s.doc_id for s in sources], [1] * len(sources), 2)
    seen = tmp_path / "seen"
    seen.mkdir()

    def note(doc, folder=str(seen)):  # travels by value: workers cannot import this module
        import os

        with open(os.path.join(folder, str(os.getpid())), "a") as f:
            f.write(doc.doc_id + "\n")
        return doc.doc_id

    try:
        with BeamTestPipeline(runner=make_runner(options), options=options) as p:
            read = (
                p | beam.Create(sources) | ReadDocuments(ReadSettings(), dedup=False, queue=queue)
            )
            assert_that(read[MAIN] | beam.Map(note), equal_to([s.doc_id for s in sources]))
        by_worker = sorted(sorted(f.read_text().split()) for f in seen.iterdir())
        claimed = queue.claimed()
        by_ticket = sorted(sorted(d for d, t in claimed.items() if t == k) for k in (0, 1))
        assert by_worker == [t for t in by_ticket if t], json.dumps(claimed)
        assert len(claimed) == len(sources)
    finally:
        queue.remove()


def test_tokenize_stores_ids_that_decode_to_the_text(tmp_path, qwen3_dir, qwen3):
    config = BuildConfig(tokenizer=str(qwen3_dir), seq_len=64, output=str(tmp_path / "out"))
    doc = TextDocument("book/a", "book", "a.txt", [BOOK_TEXT])
    staging = str(tmp_path / "staging")
    with _pipeline() as p:
        batches = p | beam.Create([doc]) | Tokenize(config, staging)
        assert_that(
            batches | beam.Map(lambda b: [(d.doc_id, d.reused, d.n_tokens > 0) for d in b]),
            equal_to([[("book/a", False, True)]]),
        )
    path = token_store.path_for(staging, "book/a")
    ids = np.fromfile(path, dtype="<i4")
    text = qwen3.tokenizer.decode(ids.tolist(), skip_special_tokens=False)
    assert text.startswith("Chapter One") and "bright cold day in April" in text
    assert text.endswith("The clocks were striking." + qwen3.end_of_text)
    assert len(ids) < len(BOOK_TEXT) / 2  # real subword tokens, not bytes
    assert int(ids[-1]) == qwen3.end_of_text_id


def _tokenized(doc_id: str, n: int, tokens_path: str = "") -> TokenizedDocument:
    return TokenizedDocument(
        doc_id=doc_id,
        kind="book",
        origin=doc_id,
        files=[],
        n_bytes=n,
        content_sha256="0" * 64,
        n_tokens=n,
        tokens_path=tokens_path,
    )


def test_plan_samples_windows_packs_and_holds_out_whole_documents():
    # two batches, as the tokenize step gives them: the plan comes back a batch at a time,
    # keyed by the batch's first document
    batches = [[_tokenized("long", 10), _tokenized("short", 3)], [_tokenized("mid", 5)]]
    settings = PlanSettings(seq_len=4, overlap=1, samples_per_shard=2)
    with _pipeline() as p:
        planned = p | beam.Create(batches) | PlanSamples(settings)
        pieces = planned[MAIN] | "Pieces" >> beam.Map(
            lambda kv: (
                kv[0],
                {
                    d: sorted((a.start, a.length, a.split) for a in got)
                    for d, got in kv[1][1].items()
                },
            )
        )
        assert_that(
            pieces,
            equal_to(
                [
                    (
                        "long",
                        {
                            "long": [(0, 4, "train"), (3, 4, "train"), (6, 4, "train")],
                            "short": [(0, 3, "train")],
                        },
                    ),
                    ("mid", {"mid": [(0, 4, "train"), (3, 2, "train")]}),
                ]
            ),
            label="Pieces",
        )
        assert_that(
            planned[SUMMARY] | "Held" >> beam.Map(lambda s: s["validation_doc_ids"]),
            equal_to([[]]),
            label="NothingHeldOut",
        )
    held_out = PlanSettings(seq_len=4, overlap=1, samples_per_shard=2, eval_fraction=0.3)
    with _pipeline() as p:
        planned = p | beam.Create(batches) | PlanSamples(held_out)
        splits = planned[MAIN] | "Splits" >> beam.FlatMap(
            lambda kv: [(d, sorted({a.split for a in got})) for d, got in kv[1][1].items()]
        )
        # sha256 of "0|long", "0|mid", "0|short": 33bd.., 6f9a.., 846d..: long comes first
        # and its 10 of 18 tokens reach 0.3, so long alone is held out, whole
        assert_that(
            splits,
            equal_to([("long", ["validation"]), ("mid", ["train"]), ("short", ["train"])]),
        )


def test_cut_and_write_shards_put_each_token_in_its_sample(tmp_path):
    staging = str(tmp_path / "staging")
    docs = []
    for doc_id, n, base in (("a", 6, 100), ("b", 3, 200)):
        path = token_store.path_for(staging, doc_id)
        token_store.store(path, np.arange(base, base + n, dtype=np.int32))
        docs.append(_tokenized(doc_id, n, path))
    settings = PlanSettings(seq_len=4, samples_per_shard=8)
    with _pipeline() as p:
        tokenized = p | beam.Create([[d] for d in docs])  # two batches, one shard
        planned = tokenized | PlanSamples(settings)
        keyed = tokenized | beam.Map(lambda batch: (batch[0].doc_id, batch))
        cut = {"doc": keyed, "plan": planned[MAIN]} | CutSegments()
        stats = cut[MAIN] | WriteShards(staging, "arrow", 4)
        assert_that(
            stats | beam.Map(lambda s: (s["path"], s["split"], s["rows"], s["tokens"])),
            equal_to([("shards/train-00000-of-00001.arrow", "train", 3, 9)]),
            label="Stats",
        )
        assert_that(
            cut[DOCUMENTS] | beam.Map(lambda rows: [(r["doc_id"], r["n_segments"]) for r in rows]),
            equal_to([[("a", 2)], [("b", 1)]]),
            label="Rows",
        )
    with pa.OSFile(f"{staging}/shards/train-00000-of-00001.arrow") as fh:
        rows = pa.ipc.open_stream(fh).read_all().to_pylist()
    got = sorted((r["input_ids"], r["seq_lengths"], r["doc_ids"], r["doc_starts"]) for r in rows)
    # a (6 tokens) -> [0,4) and [4,6); b (3) whole; best fit puts a's tail... nowhere (2+3 > 4)
    assert got == sorted(
        [
            ([100, 101, 102, 103], [4], ["a"], [0]),
            ([104, 105], [2], ["a"], [4]),
            ([200, 201, 202], [3], ["b"], [0]),
        ]
    )


def test_ahead_makes_one_item_ahead_in_order_and_raises_where_it_is_used():
    """The shard writer's read-ahead: items in order, at most one made before it is asked
    for (two batches in memory, not the shard), a failure raised at the item that failed,
    and the thread gone when the block is left early."""
    import threading

    from pipeline.steps.write import ahead

    made, used = [], []

    def items():
        for i in range(5):
            made.append(i)
            yield i

    with ahead(items()) as it:
        for i in it:
            time.sleep(0.05)  # the thread has had time to run as far ahead as it may
            assert len(made) <= i + 2, (i, made)
            used.append(i)
    assert used == [0, 1, 2, 3, 4]

    def failing():
        yield 0
        raise OSError("token store gone")

    got = []
    with pytest.raises(OSError, match="token store gone"), ahead(failing()) as it:
        for i in it:
            got.append(i)
    assert got == [0]

    before = threading.active_count()
    with ahead(iter(range(1000))) as it:
        next(it)
    assert threading.active_count() == before


@pytest.mark.parametrize("with_documents", [False, True], ids=["no-documents", "two-batches"])
def test_write_run_files_writes_the_four_files_sorted_from_one_collect(tmp_path, with_documents):
    """The run's whole-corpus files from one last step: every part lands in its own file,
    sorted, rejects from several producers together, documents.arrow's rows from every batch's
    list, and a part with no element still gets its (empty) file: the finalize step reads all
    four."""
    from pipeline.output import read_table
    from transforms.samples.tables import document_row

    staging = str(tmp_path / "staging")
    os.makedirs(staging)
    stats = [
        {"path": "shards/validation-00000-of-00001.arrow", "rows": 1},
        {"path": "shards/train-00000-of-00001.arrow", "rows": 2},
    ]
    summary = {"packing": "best-fit", "cache_keys": []}
    with _pipeline() as p:
        written = {
            STATS: p | "Stats" >> beam.Create(stats),
            DOCUMENTS: p
            | "Documents"
            >> beam.Create(
                [
                    [document_row(_tokenized(d, 3), 1) for d in ("b", "c")],
                    [document_row(_tokenized("a", 5), 2)],
                ]
                if with_documents
                else [],
                reshuffle=False,
            ),
            REJECTS: (
                p | "ReadRejects" >> beam.Create([Reject("/in/z.bin", "binary", "NUL bytes")]),
                p | "PlanRejects" >> beam.Create([Reject("/in/a.txt", "mix", "left out")]),
            ),
            SUMMARY: p | "Summary" >> beam.Create([summary]),
        } | WriteRunFiles(staging)
        assert_that(written | beam.Map(len), equal_to([4]))
    files = sorted(os.listdir(staging))
    assert files == ["documents.arrow", "plan.json", "rejects.jsonl", "shards.json"]
    with open(os.path.join(staging, "shards.json")) as f:
        assert [s["path"] for s in json.load(f)] == sorted(s["path"] for s in stats)
    with open(os.path.join(staging, "plan.json")) as f:
        assert json.load(f) == summary
    with open(os.path.join(staging, "rejects.jsonl")) as f:
        assert [json.loads(line)["path"] for line in f] == ["/in/a.txt", "/in/z.bin"]
    rows = read_table(os.path.join(staging, "documents.arrow")).to_pylist()
    expected = [("a", 5, 2), ("b", 3, 1), ("c", 3, 1)] if with_documents else []
    assert [(r["doc_id"], r["n_tokens"], r["n_segments"]) for r in rows] == expected


def test_write_run_files_refuses_a_missing_part_and_a_second_summary(tmp_path):
    staging = str(tmp_path)
    with pytest.raises(ValueError, match="WriteRunFiles takes"), _pipeline() as p:
        _ = {STATS: p | beam.Create([])} | WriteRunFiles(staging)
    with pytest.raises(Exception, match="2 summaries, not one"), _pipeline() as p:
        _ = {
            STATS: p | "Stats" >> beam.Create([]),
            DOCUMENTS: p | "Documents" >> beam.Create([]),
            REJECTS: p | "Rejects" >> beam.Create([]),
            SUMMARY: p | "Summary" >> beam.Create([{"a": 1}, {"a": 2}]),
        } | WriteRunFiles(staging)


@pytest.mark.parametrize("order", ["dependency", "path", "shuffled"])
def test_file_order_switch(tmp_path, order):
    repo = tmp_path / "pkg"
    repo.mkdir()
    (repo / "a.py").write_text("import c\nA = c.C\n")
    (repo / "b.py").write_text("B = 2\n")
    (repo / "c.py").write_text("import b\nC = b.B\n")
    sources, _ = discover(repos=[str(repo)])
    settings = ReadSettings(file_order=order, seed=0)
    with _pipeline() as p:
        read = p | beam.Create(sources) | ReadDocuments(settings, dedup=False)
        files = read[MAIN] | beam.Map(lambda d: d.files)
        expected = {
            "dependency": ["b.py", "c.py", "a.py"],  # imports first
            "path": ["a.py", "b.py", "c.py"],
        }.get(order)
        if expected:
            assert_that(files, equal_to([expected]))
        else:
            assert_that(
                files,
                equal_to([_shuffled(["a.py", "b.py", "c.py"], "code/pkg")]),
            )


def _shuffled(files: list[str], doc_id: str) -> list[str]:
    """The documented rule, written out: random.Random(first 8 bytes of sha256("0|doc_id"),
    little-endian).shuffle over the path-sorted files."""
    import hashlib
    import random

    order = list(range(len(files)))
    seed = int.from_bytes(hashlib.sha256(f"0|{doc_id}".encode()).digest()[:8], "little")
    random.Random(seed).shuffle(order)
    return [files[i] for i in order]


def test_progress_line_has_real_rates_and_an_eta():
    from pipeline.steps.tokenize import progress_line

    # the first document of a run: no rate yet (was 161,144,000,000,000 tok/s)
    assert progress_line(1, 5000, 20_000, 0.0003, 100_000) == "tokenized 1 documents, 5,000 tokens"
    line = progress_line(10, 400_000, 25_000, 2.0, 100_000)
    assert line == (
        "tokenized 10 documents, 400,000 tokens (200,000 tokens/s), 25% of the input, ETA 6s"
    )


def _counter(result, name: str) -> int:
    from apache_beam.metrics.metric import MetricsFilter

    found = result.metrics().query(MetricsFilter().with_name(name))["counters"]
    return sum(c.committed or 0 for c in found)


def test_read_step_tokenizes_long_documents_early_and_the_tokenize_step_uses_them(
    tmp_path, books_dir, qwen3_dir
):
    """Issue 20: documents of >= 64K characters are tokenized by the read step's background
    thread; the tokenize step takes those entries (none made twice) and stores the same ids a
    direct tokenization gives; a short document goes the usual way."""
    from pipeline.steps import early
    from transforms.samples.entries import tokenize_entry
    from transforms.samples.tokenize import load_tokenizer

    books = tmp_path / "books"
    books.mkdir()
    for name in ("carroll-alices-adventures-in-wonderland.txt", "austen-pride-and-prejudice.txt"):
        (books / name).write_text((books_dir / name).read_text(encoding="utf-8"))
    (books / "short.txt").write_text(BOOK_TEXT)
    config = BuildConfig(tokenizer=str(qwen3_dir), seq_len=8192, output=str(tmp_path / "out"))
    staging = str(tmp_path / "staging")
    assert early.enabled(config, staging)
    sources, _ = discover(books=[str(books)])
    p = _pipeline()
    read = (
        p
        | beam.Create(sources)
        | ReadDocuments(config.read_settings, dedup=True, early=(config, staging, None))
    )
    batches = read[MAIN] | Tokenize(config, staging, early=True)
    where = tmp_path / "where.json"

    def keep(out):
        where.write_text(
            json.dumps(
                {d.doc_id: (d.tokens_path, d.tokens_offset, d.n_tokens) for b in out for d in b}
            )
        )

    assert_that(batches, keep)
    result = p.run()
    result.wait_until_finish()
    assert _counter(result, "documents_early") == 2
    assert _counter(result, "documents_not_early") == 0
    assert _counter(result, "documents_tokenized") == 3
    assert not list((tmp_path / "staging" / early.EARLY_DIR).iterdir())  # each entry taken
    stored_at = json.loads(where.read_text())
    assert sorted(stored_at) == [
        "book/austen-pride-and-prejudice",
        "book/carroll-alices-adventures-in-wonderland",
        "book/short",
    ]
    # the ids stored are those of tokenizing the document directly
    tok = load_tokenizer(str(qwen3_dir), False)
    for item in discover(books=[str(books)])[0]:
        (doc,) = read_source(item, config.read_settings)
        stored = token_store.read(*stored_at[doc.doc_id])
        np.testing.assert_array_equal(stored, tokenize_entry(doc, tok, config)["tokens"])


def test_tokenize_step_without_an_early_entry_tokenizes_itself(tmp_path, qwen3_dir, books_dir):
    text = (books_dir / "carroll-alices-adventures-in-wonderland.txt").read_text(encoding="utf-8")
    config = BuildConfig(tokenizer=str(qwen3_dir), seq_len=8192, output=str(tmp_path / "out"))
    staging = str(tmp_path / "staging")
    p = _pipeline()
    docs = (
        p
        | beam.Create([TextDocument("book/a", "book", "a.txt", [text])])
        | Tokenize(config, staging, early=True)
    )
    assert_that(docs | beam.Map(lambda b: [d.n_tokens > 30000 for d in b]), equal_to([[True]]))
    result = p.run()
    result.wait_until_finish()
    assert _counter(result, "documents_early") == 0
    assert _counter(result, "documents_not_early") == 1


def test_early_tokenizer_skips_documents_the_incremental_cache_holds(
    tmp_path, qwen3_dir, books_dir
):
    """--incremental: a document whose entry is cached is not tokenized early (that would
    spend the work the cache saves)."""
    from pipeline import cache
    from pipeline.steps import early
    from transforms.samples.entries import content_sha256, tokenize_entry

    text = (books_dir / "carroll-alices-adventures-in-wonderland.txt").read_text(encoding="utf-8")
    cached = TextDocument("book/a", "book", "a.txt", [text])
    fresh = TextDocument("book/b", "book", "b.txt", [text + "\n\nOne more line.\n"])
    config = BuildConfig(tokenizer=str(qwen3_dir), seq_len=8192, output=str(tmp_path / "out"))
    cache_dir, staging = str(tmp_path / "cache"), str(tmp_path / "staging")
    maker = early.EarlyTokenizer(config, staging, cache_dir)
    cache.store(
        cache_dir, maker.key(content_sha256(cached)), **tokenize_entry(cached, maker.tok, config)
    )
    maker.submit(cached)
    maker.submit(fresh)
    maker.drain()
    assert maker.take(maker.key(content_sha256(cached))) is None
    assert maker.take(maker.key(content_sha256(fresh)))["tokens"].shape[0] > 30000


def test_tokenize_step_batches_short_documents_and_loses_none(tmp_path, qwen3_dir, books_dir):
    """Many short records are encoded in batches of BATCH_DOCS (one tokenizer call each, the last
    batch emitted by finish_bundle), and each batch's ids go to one file of the token store:
    every document comes out once, its run of the file (``tokens_offset``, ``n_tokens``) holds
    the ids that tokenizing it alone gives, and the runs tile each file, one file a batch."""
    from pipeline.steps.tokenize import BATCH_DOCS
    from transforms.samples.tokenize import encode_document, load_tokenizer

    text = (books_dir / "austen-pride-and-prejudice.txt").read_text(encoding="utf-8")
    n = BATCH_DOCS + 44  # one full batch, then a partial one at the end of the bundle
    docs = [
        TextDocument(f"rec/{i}", "book", f"r{i}", [text[i * 700 : i * 700 + 600 + i]])
        for i in range(n)
    ]
    config = BuildConfig(tokenizer=str(qwen3_dir), seq_len=512, output=str(tmp_path / "out"))
    staging = str(tmp_path / "staging")
    where = tmp_path / "where.json"  # each document's place in the store, as the step said

    def keep(out):
        rows = [(d.doc_id, d.tokens_path, d.tokens_offset, d.n_tokens) for b in out for d in b]
        where.write_text(json.dumps([rows, [len(b) for b in out]]))

    with _pipeline() as p:
        out = p | beam.Create(docs) | Tokenize(config, staging, early=True)
        assert_that(out, keep)
    rows, sizes = json.loads(where.read_text())
    assert sorted(r[0] for r in rows) == sorted(d.doc_id for d in docs)
    # a batch goes on as one element (the steps after pay per element, not per record)
    assert sorted(sizes) == [44, BATCH_DOCS]
    tok = load_tokenizer(str(qwen3_dir), False)
    by_id = {d.doc_id: d for d in docs}
    for doc_id, path, offset, n_tokens in rows:
        stored = token_store.read(path, offset, n_tokens)
        np.testing.assert_array_equal(stored, encode_document(by_id[doc_id], tok))
    files = {path for _, path, _, _ in rows}
    assert len(files) == 2  # the full batch's and the bundle's last
    for path in files:
        runs = sorted((offset, n) for _, p, offset, n in rows if p == path)
        assert runs[0][0] == 0
        assert all(a + n == b for (a, n), (b, _) in zip(runs, runs[1:], strict=False))
        assert os.path.getsize(path) == 4 * sum(n for _, n in runs)


def test_windows_of_a_long_book_are_scored_by_the_tokenize_step(tmp_path, books_dir, qwen3_dir):
    """Issue 20: the shard writer (one process per shard, after every worker is done) scored
    every window of a long document again (1.25 of its 1.5 s on 23M tokens). The tokenize step,
    spread over the workers, now scores each window beside the whole document, and the cut
    hands that score on: every segment within the score's reach carries its window's score."""
    from transforms.code.dependency_score import MIN_TOKENS, dependency_score

    seq_len = 50_000
    config = BuildConfig(tokenizer=str(qwen3_dir), seq_len=seq_len, output=str(tmp_path / "out"))
    sources, _ = discover(books=[str(books_dir / "austen-pride-and-prejudice.txt")])
    staging = str(tmp_path / "staging")
    ids_path = token_store.path_for(staging, sources[0].doc_id)

    def check(got):
        ids = np.fromfile(ids_path, dtype="<i4")
        assert len(ids) > 3 * seq_len and sum(n for _, n, _ in got) == len(ids)
        scored = [(start, n, score) for start, n, score in got if n >= MIN_TOKENS]
        assert len(scored) >= 3
        for start, n, score in scored:
            assert score is not None and score == dependency_score(ids[start : start + n])

    def cut_and_check():
        with _pipeline() as p:
            read = p | beam.Create(sources) | ReadDocuments(ReadSettings(), dedup=False)
            tokenized = read[MAIN] | Tokenize(config, staging, cache_dir=cache_dir)
            planned = tokenized | PlanSamples(PlanSettings(seq_len=seq_len, samples_per_shard=8))
            keyed = tokenized | beam.Map(lambda batch: (batch[0].doc_id, batch))
            cut = {"doc": keyed, "plan": planned[MAIN]} | CutSegments()
            refs = cut[MAIN] | beam.FlatMap(
                lambda kv: [(r.start, r.length, r.score) for r in kv[1]]
            )
            assert_that(refs, check)

    cache_dir = str(tmp_path / "cache")
    cut_and_check()
    # an --incremental cache entry written before the windows were scored here (no
    # window_scores): its windows are scored when it is reused, and the entry gains them
    (entry,) = (tmp_path / "cache").glob("*.npz")
    with np.load(entry) as data:
        kept = {k: data[k] for k in data.files if k != "window_scores"}
    np.savez(entry, **kept)
    cut_and_check()
    with np.load(entry) as data:
        assert "window_scores" in data.files


def test_the_records_shuffled_per_document_pickle_compactly_and_come_back_whole(
    tmp_path, books_dir, qwen3
):
    """A ``TokenizedDocument`` and a ``DocInfo`` cross each stage pickled by Beam, one per
    document: they pickle as their fields' values with each numpy array as raw bytes
    (``compact_reduce``), not numpy's own pickling (23 -> 14 us a round trip of a short
    record's document; 100,000 records 53.5 -> 48 s on 2 cores). Every field comes back equal:
    the windows, window scores (NaN for a window too short to score), chapters and score of
    a real long book and of a short record, the arrays' dtypes and shapes, writable; a field
    without an array stays None."""
    import pickle

    from pipeline.steps.plan import doc_info
    from transforms.samples.entries import tokenize_entry

    config = BuildConfig(seq_len=8192, output=str(tmp_path / "out"))
    text = (books_dir / "austen-pride-and-prejudice.txt").read_text(encoding="utf-8")
    made = []
    for doc in (
        TextDocument("book/austen", "book", "austen.txt", [text], chapters=[0, 5000]),
        TextDocument("docs/r/1", "book", "r.jsonl", [text[:900]], source="docs/r"),
    ):
        entry = tokenize_entry(doc, qwen3, config)
        made.append(
            TokenizedDocument.from_text(
                doc,
                content_sha256="0" * 64,
                n_tokens=int(entry["tokens"].shape[0]),
                tokens_path="/staging/tokens/x.bin",
                tokens_offset=77,
                chapters=entry["chapters"],
                starts=entry["starts"],
                lengths=entry["lengths"],
                score=entry["score"],
                window_scores=entry.get("window_scores"),
            )
        )
    long_book, record = made
    assert len(long_book.starts) > 10 and np.isnan(long_book.window_scores).any()
    records = [*made, doc_info(long_book), doc_info(record)]
    records.append(TokenizedDocument("docs/r/2", "book", "r.jsonl", [], 0, "", 0, "p"))
    # arrays of other shapes and kinds: 2-D, 0-d, big-endian, and one of Python objects
    # (pickled as numpy pickles it: its bytes would be pointers)
    odd = TokenizedDocument("docs/r/3", "book", "r.jsonl", [], 0, "", 0, "p")
    odd.chapters = np.arange(6, dtype=">i4").reshape(2, 3)
    odd.starts, odd.lengths = np.array(5), np.array(["a", 1], dtype=object)
    records.append(odd)
    for original in records:
        data = pickle.dumps(original, pickle.HIGHEST_PROTOCOL)
        back = pickle.loads(data)
        assert type(back) is type(original)
        for name, value in vars(original).items():
            got = getattr(back, name)
            if isinstance(value, np.ndarray):
                assert got.dtype == value.dtype and got.shape == value.shape, name
                np.testing.assert_array_equal(got, value, err_msg=name)  # NaN where NaN
                assert got.flags.writeable, name
            else:
                assert got == value and type(got) is type(value), name
    for short in (record, doc_info(record)):
        assert len(pickle.dumps(short, 5)) < 0.7 * len(pickle.dumps(vars(short), 5))
    # a record pickled before its class gained a field (values one short) gets its default
    rebuild, (cls, values, arrays) = record.__reduce__()
    older = rebuild(cls, values[:-1], arrays)
    assert older.reused is False and older.n_tokens == record.n_tokens


def test_a_plan_segment_past_its_document_stops_the_cut(tmp_path):
    """A batch of short documents shares one token file, so a segment read past a document's
    end would quietly give the next document's ids: the cut refuses such a segment."""
    from pipeline.steps.plan import CutSegmentsFn
    from transforms.samples.plan import Assignment

    doc = TokenizedDocument("docs/r/1", "book", "r.jsonl", [], 10, "", 10, "/s/t.bin", 40)
    fits = Assignment(sample=0, slot=0, start=4, length=6, shard=0)

    def cut(assignments):
        plan = ({"train": 1}, {"docs/r/1": assignments})
        return list(CutSegmentsFn().process(("docs/r/1", {"doc": [[doc]], "plan": [plan]})))

    (_, (_, [ref])), (_, [row]) = cut([fits])
    assert (ref.start, ref.length, ref.tokens_offset) == (4, 6, 40) and row["n_segments"] == 1
    past = Assignment(sample=0, slot=0, start=4, length=7, shard=0)
    with pytest.raises(RuntimeError, match="passes its 10 tokens"):
        cut([past])


def test_the_cut_keeps_a_batch_together_and_skips_its_left_out_documents():
    """The tokenize step's batch of short records goes through the join and the cut as one
    element: the cut gives one list of references per shard the batch reaches and one list of
    documents.arrow rows, for the documents the plan kept (a document left out by --mix gets
    neither); a plan naming a document the batch lacks is a wiring bug, stopped here."""
    from pipeline.steps.plan import CutSegmentsFn
    from transforms.samples.plan import Assignment

    batch = [
        TokenizedDocument(f"docs/r/{i}", "book", "r.jsonl", [], 5, "", 5, "/s/t.bin", 5 * i)
        for i in range(3)
    ]
    plan = {
        "docs/r/0": [Assignment(sample=0, slot=0, start=0, length=5, shard=0)],
        "docs/r/2": [
            Assignment(sample=1, slot=0, start=0, length=3, shard=1),
            Assignment(sample=2, slot=0, start=3, length=2, shard=0, split="validation"),
        ],
    }
    shards = {"train": 2, "validation": 1}
    grouped = {"doc": [batch], "plan": [(shards, plan)]}
    out = list(CutSegmentsFn().process(("docs/r/0", grouped)))
    refs = {
        key: [(r.doc_id, r.start, r.tokens_offset) for r in got] for tag, (key, got) in out[:-1]
    }
    assert [tag for tag, _ in out] == [MAIN, MAIN, MAIN, DOCUMENTS]
    assert refs == {
        ("train", 0, 2): [("docs/r/0", 0, 0)],
        ("train", 1, 2): [("docs/r/2", 0, 10)],
        ("validation", 0, 1): [("docs/r/2", 3, 10)],
    }
    assert [(r["doc_id"], r["n_segments"]) for r in out[-1][1]] == [
        ("docs/r/0", 1),
        ("docs/r/2", 2),
    ]
    stray = {"doc": [batch[:2]], "plan": [(shards, plan)]}
    with pytest.raises(RuntimeError, match="docs/r/2"):
        list(CutSegmentsFn().process(("docs/r/0", stray)))


def test_an_incremental_rerun_sends_the_reused_records_on_in_batches(
    tmp_path, qwen3_dir, books_dir
):
    """--incremental: on a rerun every short record comes from the cache, not from a tokenizer
    call; such records go on in lists of BATCH_DOCS too (the last from finish_bundle), their
    ids in one file of the token store a list, so the steps after pay per list, not per
    record: none is lost or repeated, and each one's run of its file holds its own ids."""
    from pipeline.steps.tokenize import BATCH_DOCS
    from transforms.samples.tokenize import encode_document, load_tokenizer

    text = (books_dir / "austen-pride-and-prejudice.txt").read_text(encoding="utf-8")
    docs = [
        TextDocument(f"rec/{i}", "book", f"r{i}", [text[i * 500 : i * 500 + 400]])
        for i in range(BATCH_DOCS + 30)
    ]
    config = BuildConfig(tokenizer=str(qwen3_dir), seq_len=512, output=str(tmp_path / "out"))
    cache_dir = str(tmp_path / "cache")
    seen = tmp_path / "seen.json"

    def keep(out):
        rows = [
            [(d.doc_id, d.reused, d.tokens_path, d.tokens_offset, d.n_tokens) for d in b]
            for b in out
        ]
        seen.write_text(json.dumps(rows))

    for run in ("first", "rerun"):
        with _pipeline() as p:
            out = p | beam.Create(docs) | Tokenize(config, str(tmp_path / run), cache_dir=cache_dir)
            assert_that(out, keep)
        batches = json.loads(seen.read_text())
        got = sorted(row[0] for batch in batches for row in batch)
        assert got == sorted(d.doc_id for d in docs), run
        assert sorted(len(b) for b in batches) == [30, BATCH_DOCS], run
        assert {row[1] for batch in batches for row in batch} == {run == "rerun"}, run
        assert all(len({row[2] for row in batch}) == 1 for batch in batches), run
    tok = load_tokenizer(str(qwen3_dir), False)
    by_id = {d.doc_id: d for d in docs}
    for batch in batches:
        for doc_id, _, path, offset, n_tokens in batch:
            stored = token_store.read(path, offset, n_tokens)
            np.testing.assert_array_equal(stored, encode_document(by_id[doc_id], tok))


@pytest.mark.parametrize("batch", [True, False], ids=["batched", "dask"])
def test_reused_documents_wait_up_to_ready_tokens_and_go_on_in_order(
    tmp_path, qwen3_dir, books_dir, monkeypatch, batch
):
    """Documents reused from the cache wait in a list until it holds READY_TOKENS ids (here
    made small); one that holds as many alone goes alone, after what waits; the lists keep
    the documents' order, share one file each and read back each document's own ids. Where the
    runner drops finish_bundle's outputs (``batch=False``, DaskRunner) each goes alone at
    once and nothing waits for finish_bundle."""
    from pipeline import cache
    from pipeline.steps import tokenize as step

    text = (books_dir / "austen-pride-and-prejudice.txt").read_text(encoding="utf-8")
    sizes = [300, 400, 5000, 350, 300, 380, 420, 310]  # characters; the 5000 is the big one
    docs = [
        TextDocument(f"rec/{i}", "book", f"r{i}", [text[i * 6000 : i * 6000 + n]])
        for i, n in enumerate(sizes)
    ]
    config = BuildConfig(tokenizer=str(qwen3_dir), seq_len=512, output=str(tmp_path / "out"))
    cache_dir = str(tmp_path / "cache")

    def run(staging: str, **options):
        fn = step.TokenizeFn(config, str(tmp_path / staging), cache_dir=cache_dir, **options)
        fn.setup()
        fn.start_bundle()
        per_call = [list(fn.process(d)) for d in docs]
        last = [w.value for w in fn.finish_bundle()]
        return per_call, last

    run("first")  # fills the cache
    monkeypatch.setattr(step, "READY_TOKENS", 200)
    per_call, last = run("rerun", batch=batch)
    lists = [out for outs in per_call for out in outs] + last
    assert [d.doc_id for out in lists for d in out] == [d.doc_id for d in docs]
    assert all(d.reused for out in lists for d in out)
    if not batch:
        assert [len(outs) for outs in per_call] == [1] * len(docs) and last == []
        assert all(len(out) == 1 for out in lists)
    else:  # the rule, over the documents' sizes in ids
        expected, waiting, total = [], [], 0
        for d in (x for out in lists for x in out):
            if d.n_tokens >= 200:
                expected += [waiting] * bool(waiting) + [[d.doc_id]]
                waiting, total = [], 0
                continue
            waiting.append(d.doc_id)
            total += d.n_tokens
            if total >= 200:
                expected.append(waiting)
                waiting, total = [], 0
        expected += [waiting] * bool(waiting)
        assert [[d.doc_id for d in out] for out in lists] == expected
        # the big one came while two waited (~170 ids): they went first, then it alone
        assert expected[:2] == [["rec/0", "rec/1"], ["rec/2"]] and last
    for out in lists:
        assert len({d.tokens_path for d in out}) == 1
        for d in out:
            entry = cache.load(cache_dir, d.cache_key)
            got = token_store.read(d.tokens_path, d.tokens_offset, d.n_tokens)
            np.testing.assert_array_equal(got, entry["tokens"])
