"""Real photos the tests send: they ship inside packages the tests install (no downloads)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import skimage.data

SKIMAGE_DATA = Path(skimage.data.__file__).parent
PHOTOS = {
    "chelsea": SKIMAGE_DATA / "chelsea.png",  # cat, 451x300 RGB PNG
    "coffee": SKIMAGE_DATA / "coffee.png",  # 600x400 RGB PNG
    "astronaut": SKIMAGE_DATA / "astronaut.png",  # 512x512 RGB PNG
    "rocket": SKIMAGE_DATA / "rocket.jpg",  # 427x640 JPEG
    "grace_hopper": Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg",
}
