"""Pure logic of the pipeline: text decoding, reading, tokenizing, windowing and packing.

Nothing here imports Apache Beam or torch; ``pipeline/`` wires these functions into PTransforms.
"""
