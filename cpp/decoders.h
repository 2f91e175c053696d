// What the JPEG and PNG decoders hand to image_decoding.cpp, which turns it into RGB.
#pragma once

#include <cstdint>
#include <vector>

// The 8-bit samples of one pixel, in the order a decoder stores them.
enum class SampleLayout {
  Gray,
  GrayAlpha,
  Rgb,
  RgbAlpha,
  InvertedCmyk,  // Adobe's CMYK, stored inverted, which Pillow assumes for every CMYK JPEG
};

struct DecodedSamples {
  int width = 0;
  int height = 0;
  SampleLayout layout = SampleLayout::Rgb;
  std::vector<std::uint8_t> samples;  // row-major, interleaved, no row padding
  int orientation = 1;                // EXIF orientation, 1 (as stored) to 8
};

// Both throw InputError. They check the size against the pixel limit before decoding pixels.
DecodedSamples decode_jpeg(const std::vector<std::uint8_t>& bytes);
DecodedSamples decode_png(const std::vector<std::uint8_t>& bytes);

// Throws InputError for more pixels than the handler's default max_image_pixels (50 MP):
// checked from the header, so a small file declaring a huge image is refused before decoding.
void check_pixel_count(std::uint64_t width, std::uint64_t height);
