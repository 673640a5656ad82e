"""The bulk layer: ``resnext classify|embed --output``, classification and embeddings over whole collections.

- :mod:`.engine`: input lists and the local engine.  :mod:`.ray_engine`: the same rows on Ray Data.
- :mod:`.output`: rows, the lock, the manifest and the writer base.  :mod:`.writers`: ``.jsonl``/``.csv`` and
  :func:`~resnext.bulk.writers.open_writer`.  :mod:`.parts`: ``.parquet``/``.npy``.
"""
