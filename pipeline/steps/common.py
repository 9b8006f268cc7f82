"""What every step shares: output tags, the metrics namespace, and :class:`SplitTagged`."""

from __future__ import annotations

import json

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

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


def write_json(obj, path: str) -> str:
    """Driver-side bookkeeping (shard stats, plan summary) as JSON; returns the path."""
    with FileSystems.create(path) as fh:
        fh.write(json.dumps(obj, indent=1, sort_keys=True).encode("utf-8"))
    return path
