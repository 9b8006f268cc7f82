"""What a DaskRunner task of the pipeline imports, imported ahead: each worker of ``python -m
pipeline.dask_cluster`` imports this module as it starts (Dask's ``preload``), and so does the
cluster's scheduler.

Without it the first run on a fresh cluster paid for the imports inside the run: the
scheduler unpickles the graph a run sends (so it imports Apache Beam and the pipeline's steps
first), and each worker imports them when its first task arrives. On the 16-core GPU
machine, 16 workers: the first read came 12.6 s after the run's pipeline started, with one or
two cores busy (docs/benchmarks.md, "Dask"). For a cluster started otherwise::

    dask scheduler --preload pipeline.dask_preload
    dask worker tcp://HOST:8786 --preload pipeline.dask_preload

(from a folder where ``pipeline`` imports, e.g. this checkout or an installed longctx).
"""

from __future__ import annotations

from pipeline.beam_import import import_beam

import_beam()  # without the connectors the pipeline never uses (pipeline/beam_import.py)

import apache_beam.runners.dask.transform_evaluator  # noqa: E402, F401 - the tasks' bag ops

import pipeline.config  # noqa: E402, F401 - the run's settings, pickled in the steps
import pipeline.output  # noqa: E402, F401 - the shard writer's Arrow and hashing
import pipeline.plots  # noqa: E402, F401 - the plan step writes the plots' data
import pipeline.steps  # noqa: E402, F401 - every step's DoFns
import transforms.samples.tokenize  # noqa: E402, F401 - the tokenize step's tokenizers library
