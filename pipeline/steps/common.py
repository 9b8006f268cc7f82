"""What every step shares: output tags, the metrics namespace, :class:`SplitTagged` and
:class:`Collect`."""

from __future__ import annotations

import apache_beam as beam

MAIN = "main"
REJECTS = "rejects"
DOCUMENTS = "documents"
SUMMARY = "summary"
STATS = "stats"  # a shard's stats, from the shard writer
NAMESPACE = "longctx"


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

    ``side_inputs=True``: ``beam.combiners.ToList()``, which gets its output for an empty
    input from a side input over the combined result (``CombineGlobally``'s defaults).
    ``side_inputs=False``: no side input. Beam 2.77's DaskRunner computes a side input by
    running the graph above it again inside a task, so each ``ToList`` read and tokenized the
    corpus once more there. A one-element ``Create`` (an empty list) joins the input instead,
    and the combine is ``without_defaults``. On DirectRunner that costs two stages more (the
    ``Create``'s and the ``Flatten``'s), so it is for the runners that need it.
    """

    def __init__(self, side_inputs: bool = True):
        super().__init__()
        self.with_side_inputs = side_inputs

    def expand(self, pcoll):
        if self.with_side_inputs:
            return pcoll | "ToList" >> beam.combiners.ToList()
        seed = pcoll.pipeline | "Seed" >> beam.Create([[]], reshuffle=False)
        return (
            (pcoll | "Wrap" >> beam.Map(lambda e: [e]), seed)
            | "WithSeed" >> beam.Flatten()
            | "Concat" >> beam.CombineGlobally(_Concat()).without_defaults()
        )
