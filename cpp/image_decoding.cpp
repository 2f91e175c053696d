#include "image_decoding.h"

#include <algorithm>
#include <initializer_list>
#include <string>

#include "decoders.h"
#include "exif_orientation.h"

namespace {

constexpr std::uint64_t kMaxPixels = 50'000'000;

bool starts_with(const std::vector<std::uint8_t>& bytes,
                 std::initializer_list<std::uint8_t> magic) {
  return bytes.size() >= magic.size() && std::equal(magic.begin(), magic.end(), bytes.begin());
}

// Pillow's SHIFTFORDIV255 (libImaging/ImagingUtils.h): a / 255, rounded down, for a < 2^24.
std::uint32_t shift_for_div255(std::uint32_t a) { return ((a >> 8) + a) >> 8; }

// Pillow's MULDIV255: a * b / 255, rounded.
int mul_div255(int a, int b) { return static_cast<int>(shift_for_div255(a * b + 128)); }

// Image.alpha_composite(white, rgba).convert("RGB"), in Pillow's integer arithmetic
// (libImaging/AlphaComposite.c, 7 extra bits of precision) so the pixels are the handler's.
void composite_on_white(const std::uint8_t* rgba, std::uint8_t* rgb) {
  constexpr std::uint32_t kPrecision = 7;
  constexpr std::uint32_t kWhite = 255;
  const std::uint32_t alpha = rgba[3];
  if (alpha == 0) {
    std::fill_n(rgb, 3, kWhite);
    return;
  }
  const std::uint32_t blend = kWhite * (255 - alpha);  // the white's own alpha is 255
  const std::uint32_t alpha_255 = alpha * 255 + blend;
  const std::uint32_t source_share = alpha * 255 * 255 * (1 << kPrecision) / alpha_255;
  const std::uint32_t white_share = 255 * (1 << kPrecision) - source_share;
  for (int channel = 0; channel < 3; ++channel) {
    const std::uint32_t mixed = rgba[channel] * source_share + kWhite * white_share;
    rgb[channel] = static_cast<std::uint8_t>(
        shift_for_div255(mixed + (0x80 << kPrecision)) >> kPrecision);
  }
}

// Pillow's "CMYK;I" unpacking (255 - sample) then its cmyk2rgb (libImaging/Convert.c).
void inverted_cmyk_to_rgb(const std::uint8_t* samples, std::uint8_t* rgb) {
  const int not_black = samples[3];  // 255 - (255 - sample)
  for (int channel = 0; channel < 3; ++channel) {
    const int ink = 255 - samples[channel];
    rgb[channel] = static_cast<std::uint8_t>(
        std::clamp(not_black - mul_div255(ink, not_black), 0, 255));
  }
}

void pixel_to_rgb(SampleLayout layout, const std::uint8_t* samples, std::uint8_t* rgb) {
  switch (layout) {
    case SampleLayout::Gray:
      std::fill_n(rgb, 3, samples[0]);
      return;
    case SampleLayout::GrayAlpha: {
      const std::uint8_t rgba[4] = {samples[0], samples[0], samples[0], samples[1]};
      composite_on_white(rgba, rgb);
      return;
    }
    case SampleLayout::Rgb:
      std::copy_n(samples, 3, rgb);
      return;
    case SampleLayout::RgbAlpha:
      composite_on_white(samples, rgb);
      return;
    case SampleLayout::InvertedCmyk:
      inverted_cmyk_to_rgb(samples, rgb);
      return;
  }
}

std::size_t samples_per_pixel(SampleLayout layout) {
  switch (layout) {
    case SampleLayout::Gray: return 1;
    case SampleLayout::GrayAlpha: return 2;
    case SampleLayout::Rgb: return 3;
    default: return 4;
  }
}

RgbImage to_rgb(const DecodedSamples& decoded) {
  RgbImage image(decoded.width, decoded.height);
  const std::size_t pixels = static_cast<std::size_t>(decoded.width) * decoded.height;
  const std::size_t step = samples_per_pixel(decoded.layout);
  for (std::size_t i = 0; i < pixels; ++i) {
    pixel_to_rgb(decoded.layout, &decoded.samples[i * step], &image.pixels[i * 3]);
  }
  return image;
}

}  // namespace

void check_pixel_count(std::uint64_t width, std::uint64_t height) {
  if (width == 0 || height == 0) {
    throw InputError("the image declares an empty size " + std::to_string(width) + "x" +
                     std::to_string(height));
  }
  if (width * height > kMaxPixels) {
    throw InputError("the image is " + std::to_string(width) + "x" + std::to_string(height) +
                     " = " + std::to_string(width * height) + " pixels, over the limit of " +
                     std::to_string(kMaxPixels) + " pixels");
  }
}

RgbImage decode_image(const std::vector<std::uint8_t>& bytes) {
  if (bytes.empty()) throw InputError("the file is empty");
  DecodedSamples decoded;
  if (starts_with(bytes, {0xFF, 0xD8, 0xFF})) {
    decoded = decode_jpeg(bytes);
  } else if (starts_with(bytes, {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'})) {
    decoded = decode_png(bytes);
  } else {
    throw InputError("not an image in a supported format (JPEG, PNG)");
  }
  return apply_orientation(to_rgb(decoded), decoded.orientation);
}
