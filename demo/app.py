"""Hugging Face Space entry point: the `resnext demo` page, unchanged.

Spaces run ``python app.py`` with Gradio's server settings in the environment (GRADIO_SERVER_NAME=0.0.0.0 there);
run locally it binds 127.0.0.1:7860. Settings (environment variables):

* ``RESNEXT_DEMO_WEIGHTS``: weights name, checkpoint file or URL, or ``hf-hub:owner/name[@revision]`` (weights shared
  on the Hub with ``resnext export-weights --format hf``; a private repo reads the Space's ``HF_TOKEN`` secret)
  (default: ``DEFAULT``, NVIDIA's published weights)
* ``RESNEXT_DEMO_ARCH``: architecture (default: the checkpoint's own, else resnext101_32x4d)
* ``RESNEXT_DEMO_EXPLAIN=0``: hide Grad-CAM heat-maps
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# the package: installed (requirements.txt), copied beside this file, or the repository's src/ folder
for candidate in (HERE, HERE.parent / "src"):
    if (candidate / "resnext" / "__init__.py").is_file() and str(candidate) not in sys.path:
        sys.path.insert(0, str(candidate))

from resnext.demo import build_app, create_demo_model, launch, remove_uploads  # noqa: E402


def main() -> None:
    # the model (an hf-hub: source downloads here) comes before Gradio, whose import switches the Hub client offline
    model = create_demo_model(
        os.environ.get("RESNEXT_DEMO_ARCH") or None,
        weights=os.environ.get("RESNEXT_DEMO_WEIGHTS", "DEFAULT"),
        explain=os.environ.get("RESNEXT_DEMO_EXPLAIN", "1") != "0",
    )
    app = build_app(model)
    host = os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")
    port = int(os.environ.get("GRADIO_SERVER_PORT", "7860"))
    try:
        launch(app, host=host, port=port, block=True)
    finally:
        app.close()
        remove_uploads()


if __name__ == "__main__":
    main()
