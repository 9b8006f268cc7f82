"""The training stage: Unsloth long-context LoRA/QLoRA on the pipeline's shards.

Nothing here imports ``pipeline/`` or, until training really starts, ``unsloth``/``torch``:
planning (``--dry-run``) runs on any CPU machine.
"""
