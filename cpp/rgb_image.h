// An 8-bit RGB picture, and the error raised for input the program cannot use.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <vector>

// Row-major, 3 bytes (R, G, B) per pixel, no row padding.
struct RgbImage {
  int width = 0;
  int height = 0;
  std::vector<std::uint8_t> pixels;

  RgbImage() = default;
  // Every pixel starts black, which centre_crop relies on for its padding.
  RgbImage(int width, int height)
      : width(width), height(height), pixels(static_cast<std::size_t>(width) * height * 3) {}

  std::uint8_t* at(int x, int y) { return &pixels[(static_cast<std::size_t>(y) * width + x) * 3]; }
  const std::uint8_t* at(int x, int y) const {
    return &pixels[(static_cast<std::size_t>(y) * width + x) * 3];
  }
};

// A bad image, model or label map: main prints the message and exits with status 1.
class InputError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
