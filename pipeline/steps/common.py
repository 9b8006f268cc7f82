"""What every step shares: output tags, the metrics namespace, and :class:`SplitTagged`."""

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
