// Pillow's Image.resize(size, Image.BILINEAR) on an RGB image, bit for bit.
#pragma once

#include "rgb_image.h"

// What torchvision's Resize does to a PIL image (bilinear, which Pillow always antialiases):
// Pillow's libImaging/Resample.c reimplemented with the same filter, the same double-precision
// weights rounded to the same fixed-point integers, and the same order of passes (Pillow 13's).
RgbImage resize_bilinear(RgbImage image, int width, int height);
