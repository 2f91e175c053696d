#include "exif_orientation.h"

#include <algorithm>
#include <utility>

namespace {

constexpr std::uint32_t kOrientationTag = 0x0112;
constexpr std::uint32_t kShortType = 3;
constexpr std::size_t kEntrySize = 12;

// Reads integers in the byte order the TIFF header declares. Callers check the bounds.
struct TiffReader {
  const std::uint8_t* data;
  bool little_endian;

  std::uint32_t u16(std::size_t at) const {
    return little_endian ? data[at] | data[at + 1] << 8 : data[at] << 8 | data[at + 1];
  }
  std::uint32_t u32(std::size_t at) const {
    return little_endian ? u16(at) | u16(at + 2) << 16 : u16(at) << 16 | u16(at + 2);
  }
};

// The stored pixel shown at (x, y), for a stored picture of width x height. Pillow's names:
// 2 FLIP_LEFT_RIGHT, 3 ROTATE_180, 4 FLIP_TOP_BOTTOM, 5 TRANSPOSE, 6 ROTATE_270 (90 degrees
// clockwise), 7 TRANSVERSE, 8 ROTATE_90 (counter-clockwise).
std::pair<int, int> stored_position(int x, int y, int width, int height, int orientation) {
  switch (orientation) {
    case 2: return {width - 1 - x, y};
    case 3: return {width - 1 - x, height - 1 - y};
    case 4: return {x, height - 1 - y};
    case 5: return {y, x};
    case 6: return {y, height - 1 - x};
    case 7: return {width - 1 - y, height - 1 - x};
    case 8: return {width - 1 - y, x};
    default: return {x, y};
  }
}

}  // namespace

int exif_orientation(const std::uint8_t* tiff, std::size_t size) {
  if (size < 8) return 1;
  const bool little = tiff[0] == 'I' && tiff[1] == 'I';
  const bool big = tiff[0] == 'M' && tiff[1] == 'M';
  const TiffReader reader{tiff, little};
  if (!(little || big) || reader.u16(2) != 42) return 1;
  const std::size_t directory = reader.u32(4);  // IFD0, where the Orientation tag lives
  if (directory + 2 > size) return 1;
  const std::size_t entries = reader.u16(directory);
  for (std::size_t i = 0; i < entries; ++i) {
    const std::size_t entry = directory + 2 + i * kEntrySize;
    if (entry + kEntrySize > size) return 1;
    if (reader.u16(entry) != kOrientationTag) continue;
    // The standard type is one SHORT, stored in the entry's first two value bytes.
    if (reader.u16(entry + 2) != kShortType || reader.u32(entry + 4) != 1) return 1;
    const int value = static_cast<int>(reader.u16(entry + 8));
    return value >= 1 && value <= 8 ? value : 1;
  }
  return 1;
}

RgbImage apply_orientation(RgbImage image, int orientation) {
  if (orientation == 1) return image;
  const bool swaps_sides = orientation >= 5;
  RgbImage shown(swaps_sides ? image.height : image.width,
                 swaps_sides ? image.width : image.height);
  for (int y = 0; y < shown.height; ++y) {
    for (int x = 0; x < shown.width; ++x) {
      const auto [stored_x, stored_y] =
          stored_position(x, y, image.width, image.height, orientation);
      std::copy_n(image.at(stored_x, stored_y), 3, shown.at(x, y));
    }
  }
  return shown;
}
