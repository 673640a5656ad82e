"""The inference layer: the one data path (decode -> preset transforms -> backend -> top-k labels).

- :mod:`.predict`: :class:`~resnext.inference.predict.Predictor`, which classify, serve, the demo, evaluate and
  benchmark all use.
- :mod:`.auto`, :mod:`.auto_choice`, :mod:`.auto_cache`: ``--backend auto``, what it chose, and its cache of
  exported files.
- :mod:`.explain`: Grad-CAM.  :mod:`.report`: tables, JSON and PNG reports.  :mod:`.hub`: NVIDIA's torch.hub
  processing utils.
"""
