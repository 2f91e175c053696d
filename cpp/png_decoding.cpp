// PNG with libpng's classic API (not the simplified one, which converts gamma): palettes, bit
// depths under 8 and tRNS transparency are expanded, and no gamma or colour profile is
// applied, as Pillow applies none.
#include <cstdio>
#include <cstring>
#include <string>

#include <png.h>

#include "decoders.h"
#include "exif_orientation.h"
#include "rgb_image.h"

namespace {

struct Source {
  const std::vector<std::uint8_t>& bytes;
  std::size_t offset = 0;
};

struct ErrorText {
  char message[256] = "";
};

void read_bytes(png_structp png, png_bytep out, png_size_t length) {
  auto* source = static_cast<Source*>(png_get_io_ptr(png));
  if (length > source->bytes.size() - source->offset) png_error(png, "the file is truncated");
  std::memcpy(out, source->bytes.data() + source->offset, length);
  source->offset += length;
}

// libpng's error handlers must not return; the jump goes back into run_decoder.
[[noreturn]] void on_error(png_structp png, png_const_charp message) {
  auto* text = static_cast<ErrorText*>(png_get_error_ptr(png));
  std::snprintf(text->message, sizeof text->message, "%s", message);
  png_longjmp(png, 1);
}

// Warnings concern ancillary chunks libpng skips; Pillow decodes such files too.
void on_warning(png_structp, png_const_charp) {}

// Frees libpng's structures however decoding ends.
struct ReaderGuard {
  png_structp png;
  png_infop info;
  ~ReaderGuard() { png_destroy_read_struct(&png, &info, nullptr); }
};

// The rows as libpng delivers them after read_transforms: 1 to 4 channels of 8 or 16 bits.
struct RawRows {
  std::vector<std::uint8_t> bytes;
  std::vector<png_bytep> rows;
  int channels = 0;
  int bit_depth = 0;
};

void request_expansion(png_structp png, png_infop info, int color_type) {
  if (color_type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color_type == PNG_COLOR_TYPE_GRAY) png_set_expand_gray_1_2_4_to_8(png);
  if (png_get_valid(png, info, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
}

// Only an eXIf chunk before the image data is read: reading past it would make a damaged
// tail fatal, which Pillow tolerates.
int orientation_of(png_structp png, png_infop info) {
  png_uint_32 size = 0;
  png_bytep exif = nullptr;
  if (png_get_eXIf_1(png, info, &size, &exif) == 0) return 1;
  return exif_orientation(exif, size);
}

// libpng reports errors with longjmp, which skips destructors: this function therefore owns
// no object that has one (the rows live in the caller's `raw`). Returns false after an
// error, whose text is in the ErrorText given to png_create_read_struct.
bool run_decoder(png_structp png, png_infop info, RawRows& raw, DecodedSamples& decoded,
                 bool& gray_without_alpha) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_read_info(png, info);
  check_pixel_count(png_get_image_width(png, info), png_get_image_height(png, info));
  const int color_type = png_get_color_type(png, info);
  gray_without_alpha = color_type == PNG_COLOR_TYPE_GRAY;
  request_expansion(png, info, color_type);
  decoded.width = static_cast<int>(png_get_image_width(png, info));
  decoded.height = static_cast<int>(png_get_image_height(png, info));
  decoded.orientation = orientation_of(png, info);
  raw.channels = png_get_channels(png, info);
  raw.bit_depth = png_get_bit_depth(png, info);
  const std::size_t row_size = png_get_rowbytes(png, info);
  raw.bytes.resize(row_size * decoded.height);
  for (int y = 0; y < decoded.height; ++y) raw.rows.push_back(&raw.bytes[y * row_size]);
  png_read_image(png, raw.rows.data());
  return true;
}

SampleLayout layout_for(int channels) {
  switch (channels) {
    case 1: return SampleLayout::Gray;
    case 2: return SampleLayout::GrayAlpha;
    case 3: return SampleLayout::Rgb;
    default: return SampleLayout::RgbAlpha;
  }
}

// 16-bit samples (big-endian) to 8 bits as the handler gets them: Pillow keeps the high byte
// of colour and grey-with-alpha samples, and the handler divides 16-bit grey by 257 (rounding
// down); the alpha a tRNS chunk adds to grey is 0 or 65535, the same either way.
std::vector<std::uint8_t> to_eight_bits(const RawRows& raw, bool gray_without_alpha) {
  if (raw.bit_depth == 8) return raw.bytes;
  std::vector<std::uint8_t> samples(raw.bytes.size() / 2);
  for (std::size_t i = 0; i < samples.size(); ++i) {
    const unsigned value = raw.bytes[2 * i] << 8 | raw.bytes[2 * i + 1];
    const bool is_gray = gray_without_alpha && i % raw.channels == 0;
    samples[i] = static_cast<std::uint8_t>(is_gray ? value / 257 : value >> 8);
  }
  return samples;
}

}  // namespace

DecodedSamples decode_png(const std::vector<std::uint8_t>& bytes) {
  ErrorText errors;
  png_structp png =
      png_create_read_struct(PNG_LIBPNG_VER_STRING, &errors, on_error, on_warning);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  const ReaderGuard guard{png, info};
  if (info == nullptr) throw InputError("libpng cannot start (out of memory)");
  Source source{bytes};
  png_set_read_fn(png, &source, read_bytes);
  RawRows raw;
  DecodedSamples decoded;
  bool gray_without_alpha = false;
  if (!run_decoder(png, info, raw, decoded, gray_without_alpha)) {
    throw InputError(std::string("the PNG data cannot be decoded: ") + errors.message);
  }
  decoded.layout = layout_for(raw.channels);
  decoded.samples = to_eight_bits(raw, gray_without_alpha);
  return decoded;
}
