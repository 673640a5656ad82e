"""Write scikit-learn's bundled handwritten digits (1,797 real 8x8 scans, 10 classes, no download) as an ImageFolder
tree for a quick from-scratch training run on a CPU: DATA/train/<digit>/*.png (80%) and DATA/val/<digit>/*.png
(20%, a fixed split).

    python examples/digits.py DATA        # needs scikit-learn

Each digit is padded to 16 px and saved at 64 px, so the evaluation crop at --image-size 32 (resize to 64, keep the
centre 32 px) is exactly the digit.
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

root = Path(sys.argv[1])
digits = load_digits()
order = np.random.default_rng(0).permutation(len(digits.images))
for rank, i in enumerate(order):
    folder = root / ("val" if rank < len(order) // 5 else "train") / str(digits.target[i])
    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.pad((digits.images[i] * (255 / 16)).astype(np.uint8), 4)  # values 0..16 -> 0..255, 8 -> 16 px
    Image.fromarray(pixels, "L").convert("RGB").resize((64, 64), Image.BILINEAR).save(folder / f"{i:04d}.png")
