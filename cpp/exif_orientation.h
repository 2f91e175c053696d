// EXIF orientation: the picture a viewer shows is the one classified, as in the TorchServe
// handler (Pillow's ImageOps.exif_transpose).
#pragma once

#include <cstddef>
#include <cstdint>

#include "rgb_image.h"

// The Orientation tag (1 to 8) of a TIFF-structured EXIF block (starting "II*\0" or "MM\0*"),
// or 1 (as stored) when the block is malformed or has none.
int exif_orientation(const std::uint8_t* tiff, std::size_t size);

// The picture turned and mirrored as `orientation` says.
RgbImage apply_orientation(RgbImage image, int orientation);
