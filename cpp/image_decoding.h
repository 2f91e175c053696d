// Encoded bytes in, one RGB picture out, with the TorchServe handler's conventions
// (handlers/image_decoding.py): EXIF orientation applied, transparency composited onto
// white, 16-bit samples scaled to 8 bits, at most 50 megapixels. JPEG and PNG only.
#pragma once

#include <cstdint>
#include <vector>

#include "rgb_image.h"

// Throws InputError saying what is wrong with the bytes.
RgbImage decode_image(const std::vector<std::uint8_t>& bytes);
