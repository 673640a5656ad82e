"""The training layer: ``resnext train`` and ``resnext evaluate``.

- :mod:`.config`: :class:`~resnext.training.config.TrainConfig` (NVIDIA's recipe as defaults).
- :mod:`.trainer`: the training loop.  :mod:`.optim`: optimizer and schedule.  :mod:`.data`: folders and loaders.
- :mod:`.checkpoint`: atomic, resumable checkpoints.  :mod:`.distributed`: torchrun/DDP.
- :mod:`.evaluate`: top-1/top-5 over a folder.
"""
