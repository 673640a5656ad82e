"""The model layer: architectures, their published weights, and the one resolver of a ``--weights`` value.

- :mod:`.resnet`: ``Bottleneck``, ``ResNet``, the keyword-only builders (each takes a weights enum or None) and their
  registry (``list_models``, ``get_model_builder``, ``get_model_weights``).
- :mod:`.weights`: the weights enums (URL, preprocessing, categories, metrics, license in one object) and their
  download and key remap.
- :mod:`.sources`: :func:`~resnext.model.sources.load_source`, the one place a name, file, URL, training
  checkpoint, export-weights file or ``hf-hub:`` id becomes a model.
- :mod:`.factory`: ``create_model``, a registered name with random weights or any source of :mod:`.sources`.
- :mod:`.hf`: safetensors files and Hugging Face Hub folders (read and written).
- :mod:`.hf_hub`: ``hf-hub:owner/name[@revision]`` sources, fetched within our download limits.

Depends only on the shared helpers at the package root.
"""
