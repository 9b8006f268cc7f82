"""What every step shares: output tags, the metrics namespace, :func:`freeze_heap_once`,
:class:`SplitTagged`, :class:`Collect`, and the two primitives taught to Beam 2.77's DaskRunner,
:class:`Repartition` and :class:`BroadcastJoin`."""

from __future__ import annotations

import gc

import apache_beam as beam
from apache_beam import pvalue

MAIN = "main"
REJECTS = "rejects"
DOCUMENTS = "documents"
SUMMARY = "summary"
STATS = "stats"  # a shard's stats, from the shard writer
NAMESPACE = "longctx"


_FROZEN: list[bool] = []  # freeze_heap_once has run in this process


def freeze_heap_once() -> None:
    """Put what this process holds now out of the garbage collector's sweeps, once a process
    (``gc.freeze``): Beam, dask, the pipeline's modules, ~150,000 tracked objects in a Dask
    worker. The read step's Python (``ast`` parses, decoding) allocates objects fast, and each
    of the collections that sets off went through all of those: reading 7 standard-library
    packages took 0.61 CPU-s in such a process, 0.34 after ``gc.freeze()`` (session 19,
    docs/benchmarks.md). Called from the read step's setup, when the worker has imported what
    it runs. What is frozen is still freed by reference counting; only a reference cycle
    among it would never be collected (imports live as long as the process anyway)."""
    if not _FROZEN:
        gc.freeze()
        _FROZEN.append(True)


class SplitTagged(beam.PTransform):
    """``(tag, value)`` elements -> ``{tag: PCollection of values}``.

    Used instead of ``ParDo.with_outputs``: Beam 2.77's DaskRunner does not separate tagged
    outputs (they all reach the main output), while Filter + Map works on every runner.
    """

    def __init__(self, *tags: str):
        super().__init__()
        self.tags = tags

    def expand(self, pcoll):
        return {
            tag: pcoll
            | f"Only{tag.capitalize()}" >> beam.Filter(lambda kv, t=tag: kv[0] == t)
            | f"Untag{tag.capitalize()}" >> beam.Map(lambda kv: kv[1])
            for tag in self.tags
        }


class Repartition(beam.PTransform):
    """A PCollection in ``partitions`` partitions, its elements unchanged. For Beam 2.77's
    DaskRunner only (``pipeline.runners.RunnerTraits.partitions``), where a collection keeps the
    partitions of the one it came from through every step, a ``Flatten`` adds theirs up, and
    a ``GroupByKey`` shuffles over all of them with a task for each pair of partitions. With
    the sources in 32 partitions (16 workers), the four shuffles after the tokenize step,
    over 33 to ~260 partitions, made ~13,000 of the graph's ~16,700 tasks: seconds of the
    scheduler's time at the start and between the steps at the end, for a few hundred small
    records. Gathered into one partition, they are a few tasks each.

    A primitive: ``pipeline.runners.register_dask_translations`` has the DaskRunner make it
    ``dask.bag.Bag.repartition``. A DaskRunner without that translation passes the
    collection on as it is (its ``NoOp``); other runners never get it."""

    def __init__(self, partitions: int):
        super().__init__()
        if partitions < 1:
            raise ValueError(f"Repartition: {partitions} partitions")
        self.partitions = partitions

    def expand(self, pcoll):
        return pvalue.PCollection.from_(pcoll)


class BroadcastJoin(beam.PTransform):
    """``{main: (key, v) s, small: (key, w) s}`` -> ``(key, {main: [v], small: [w...]})`` for
    each element of ``main``: what ``CoGroupByKey`` gives where the keys of ``main`` are unique
    and every key of ``small`` is one of them (duplicate removal's texts and their drops,
    ``pipeline/steps/read.py``). For Beam 2.77's DaskRunner only, in place of that
    ``CoGroupByKey``, whose task shuffle moved every text between the workers, a task for each
    pair of the texts' partitions (1,548 of the 300 MB corpus's 3,376 tasks at 64 partitions).
    Here ``main`` keeps its partitions and ``small`` is gathered into one value that every
    partition of ``main`` gets: one task makes it and every worker holds it whole, so it is
    for a ``small`` that is small (the drops: one short record a file left out; a corpus of
    millions of duplicate files would make it hundreds of MB).

    A primitive, like :class:`Repartition`: ``pipeline.runners.register_dask_translations``
    makes it ``dask.bag.Bag.map_partitions`` with ``small`` as a ``dask.delayed`` argument.
    Other runners never get it (they join through a side input)."""

    def __init__(self, main: str, small: str):
        super().__init__()
        self.main, self.small = main, small

    def expand(self, pcolls):
        if set(pcolls) != {self.main, self.small}:
            raise ValueError(
                f"BroadcastJoin: inputs {sorted(pcolls)}, not {self.main!r} and {self.small!r}"
            )
        return pvalue.PCollection.from_(pcolls[self.main])


class _Concat(beam.CombineFn):
    """Lists -> one list (their concatenation, in no set order)."""

    def create_accumulator(self):
        return []

    def add_input(self, acc, chunk):
        acc.extend(chunk)
        return acc

    def merge_accumulators(self, accs):
        out = []
        for acc in accs:
            out.extend(acc)
        return out

    def extract_output(self, acc):
        return acc


class Collect(beam.PTransform):
    """A PCollection -> one list of all its elements (in no set order): always exactly one
    output, ``[]`` for an empty input.

    No side input: a one-element ``Create`` (an empty list) joins the input, and the combine
    is ``without_defaults``. ``beam.combiners.ToList()`` gets its output for an empty input
    from a side input over the combined result (``CombineGlobally``'s defaults), and a side
    input costs twice on the runners here:

    - Beam 2.77's DaskRunner computes a side input by running the graph above it again inside
      a task: each ``ToList`` read and tokenized the corpus once more;
    - DirectRunner's state cache weighs a side input by walking every object in it
      (``objsize``): for 100,000 short records, the plan's collect and the run files' collect
      spent ~4 s of a 44-s run there. The two stages more that the seed costs (its
      ``Create`` and the ``Flatten``) did not show on a run of 24 long documents (0.99x).

    ``gather=True`` (DaskRunner): the elements are gathered into one partition first
    (:class:`Repartition`), so the combine's shuffle is over two.
    """

    def __init__(self, gather: bool = False):
        super().__init__()
        self.gather = gather

    def expand(self, pcoll):
        seed = pcoll.pipeline | "Seed" >> beam.Create([[]], reshuffle=False)
        wrapped = pcoll | "Wrap" >> beam.Map(lambda e: [e])
        if self.gather:
            wrapped = wrapped | "Gather" >> Repartition(1)
        return (
            (wrapped, seed)
            | "WithSeed" >> beam.Flatten()
            | "Concat" >> beam.CombineGlobally(_Concat()).without_defaults()
        )
