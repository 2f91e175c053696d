// JPEG with libjpeg-turbo, set up as Pillow's decoder sets it up (libImaging/JpegDecode.c
// outside draft mode): libjpeg's defaults (accurate integer IDCT, fancy upsampling) and the
// output colour space chosen by the number of components.
#include <csetjmp>
#include <cstdio>  // jpeglib.h uses FILE without including stdio.h
#include <cstring>
#include <string>

#include <jpeglib.h>
#include <jerror.h>  // message codes, for JWRN_JPEG_EOF

#include "decoders.h"
#include "exif_orientation.h"
#include "rgb_image.h"

namespace {

struct ErrorManager {
  jpeg_error_mgr base;  // first member: libjpeg hands the callbacks a pointer to it
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

// libjpeg's error handlers must not return; the jump goes back into run_decoder.
[[noreturn]] void on_error(j_common_ptr cinfo) {
  auto* errors = reinterpret_cast<ErrorManager*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, errors->message);
  std::longjmp(errors->jump, 1);
}

// On data that ends early libjpeg only warns and decodes the rest as grey. Pillow refuses a
// truncated file, so that warning is an error here; other warnings (such as stray bytes
// between markers) are decoded through, as Pillow does.
void on_message(j_common_ptr cinfo, int level) {
  if (level == -1 && cinfo->err->msg_code == JWRN_JPEG_EOF) on_error(cinfo);
}

// Closes the decompressor however decoding ends (jpeg_destroy ignores one never created).
struct DecompressorGuard {
  jpeg_decompress_struct& cinfo;
  ~DecompressorGuard() { jpeg_destroy_decompress(&cinfo); }
};

// Pillow's modes: one component is L, three RGB (libjpeg converts from YCbCr), four CMYK.
SampleLayout layout_for(int components) {
  switch (components) {
    case 1: return SampleLayout::Gray;
    case 3: return SampleLayout::Rgb;
    case 4: return SampleLayout::InvertedCmyk;
    default: throw InputError("JPEG images with " + std::to_string(components) +
                              " components are not supported");
  }
}

J_COLOR_SPACE color_space_for(SampleLayout layout) {
  switch (layout) {
    case SampleLayout::Gray: return JCS_GRAYSCALE;
    case SampleLayout::InvertedCmyk: return JCS_CMYK;
    default: return JCS_RGB;
  }
}

// The first APP1 block that holds EXIF counts, as in Pillow.
int orientation_from_markers(jpeg_saved_marker_ptr marker) {
  static const char kExifHeader[] = "Exif\0";  // with the terminator: "Exif\0\0"
  for (; marker != nullptr; marker = marker->next) {
    if (marker->marker == JPEG_APP0 + 1 && marker->data_length >= sizeof kExifHeader &&
        std::memcmp(marker->data, kExifHeader, sizeof kExifHeader) == 0) {
      return exif_orientation(marker->data + sizeof kExifHeader,
                              marker->data_length - sizeof kExifHeader);
    }
  }
  return 1;
}

// libjpeg reports errors with longjmp, which skips destructors: this function therefore owns
// no object that has one (the samples live in the caller's `decoded`). Returns false after
// an error, whose text is in errors.message.
bool run_decoder(jpeg_decompress_struct& cinfo, ErrorManager& errors,
                 const std::vector<std::uint8_t>& bytes, DecodedSamples& decoded) {
  if (setjmp(errors.jump)) return false;
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, bytes.data(), bytes.size());
  jpeg_save_markers(&cinfo, JPEG_APP0 + 1, 0xFFFF);
  jpeg_read_header(&cinfo, TRUE);
  check_pixel_count(cinfo.image_width, cinfo.image_height);
  decoded.layout = layout_for(cinfo.num_components);
  cinfo.out_color_space = color_space_for(decoded.layout);
  jpeg_start_decompress(&cinfo);
  decoded.width = static_cast<int>(cinfo.output_width);
  decoded.height = static_cast<int>(cinfo.output_height);
  const std::size_t row_size =
      static_cast<std::size_t>(cinfo.output_width) * cinfo.output_components;
  decoded.samples.resize(row_size * cinfo.output_height);
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW row = &decoded.samples[cinfo.output_scanline * row_size];
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  // Before jpeg_finish_decompress, which frees the saved markers.
  decoded.orientation = orientation_from_markers(cinfo.marker_list);
  // Reads on to the end-of-image marker, as Pillow does: a file cut after its last pixel, or
  // with a stray start-of-image marker in its data, is refused there.
  jpeg_finish_decompress(&cinfo);
  return true;
}

}  // namespace

DecodedSamples decode_jpeg(const std::vector<std::uint8_t>& bytes) {
  jpeg_decompress_struct cinfo{};
  ErrorManager errors{};
  cinfo.err = jpeg_std_error(&errors.base);
  errors.base.error_exit = on_error;
  errors.base.emit_message = on_message;
  const DecompressorGuard guard{cinfo};
  DecodedSamples decoded;
  if (!run_decoder(cinfo, errors, bytes, decoded)) {
    const bool truncated = errors.base.msg_code == JWRN_JPEG_EOF;
    throw InputError(std::string("the JPEG data cannot be decoded: ") +
                     (truncated ? "the file is truncated (" : "") + errors.message +
                     (truncated ? ")" : ""));
  }
  return decoded;
}
