"""Real photos the tests send: the build's own sample photos (resnet_mar/photos.py), which ship
inside packages the tests install (no downloads)."""

from __future__ import annotations

from resnet_mar.photos import photo_paths

PHOTOS = photo_paths()
