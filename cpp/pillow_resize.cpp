#include "pillow_resize.h"

#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

// Resample.c's fixed point: 8 bits of result and 2 bits of headroom in an int.
constexpr int kPrecisionBits = 32 - 8 - 2;

// The input pixels one output pixel averages along one axis, and their fixed-point weights.
struct Taps {
  int first = 0;
  std::vector<std::int32_t> weights;
};

// Pillow's BILINEAR filter: a triangle of support 1.
double triangle(double x) {
  if (x < 0.0) x = -x;
  return x < 1.0 ? 1.0 - x : 0.0;
}

// Resample.c's normalize_coeffs_8bpc: round half away from zero.
std::int32_t to_fixed_point(double weight) {
  const double scaled = weight * (1 << kPrecisionBits);
  return static_cast<std::int32_t>(weight < 0 ? scaled - 0.5 : scaled + 0.5);
}

// Resample.c's precompute_coeffs for the whole input range (box 0..in_size). When shrinking,
// the filter is stretched by the shrink factor, which is the antialiasing. Each expression
// keeps Pillow's operand order, so every double, and so every rounded weight, is the same.
std::vector<Taps> axis_taps(int in_size, int out_size) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double filter_scale = std::max(scale, 1.0);
  const double support = 1.0 * filter_scale;
  const double inverse_filter_scale = 1.0 / filter_scale;
  std::vector<Taps> taps(out_size);
  for (int out = 0; out < out_size; ++out) {
    const double center = (out + 0.5) * scale;
    const int first = std::max(static_cast<int>(center - support + 0.5), 0);
    const int end = std::min(static_cast<int>(center + support + 0.5), in_size);
    std::vector<double> weights(end - first);
    double total = 0.0;
    for (int i = 0; i < end - first; ++i) {
      weights[i] = triangle((i + first - center + 0.5) * inverse_filter_scale);
      total += weights[i];
    }
    taps[out].first = first;
    for (double weight : weights) {
      taps[out].weights.push_back(to_fixed_point(total != 0.0 ? weight / total : weight));
    }
  }
  return taps;
}

// Starts at one half (rounding), ends clipped to 0..255 as Resample.c's clip8 does.
std::uint8_t weighted_sum(const std::uint8_t* first, std::size_t stride, const Taps& taps) {
  std::int32_t sum = 1 << (kPrecisionBits - 1);
  for (std::size_t i = 0; i < taps.weights.size(); ++i) {
    sum += first[i * stride] * taps.weights[i];
  }
  return static_cast<std::uint8_t>(std::clamp(sum >> kPrecisionBits, 0, 255));
}

// Pillow restricts a first horizontal pass to the rows the vertical pass reads: less work,
// same values.
RgbImage resample_horizontal(const RgbImage& in, int width) {
  const std::vector<Taps> taps = axis_taps(in.width, width);
  RgbImage out(width, in.height);
  for (int y = 0; y < in.height; ++y) {
    for (int x = 0; x < width; ++x) {
      for (int channel = 0; channel < 3; ++channel) {
        const std::uint8_t* first = in.at(taps[x].first, y) + channel;
        out.at(x, y)[channel] = weighted_sum(first, 3, taps[x]);
      }
    }
  }
  return out;
}

RgbImage resample_vertical(const RgbImage& in, int height) {
  const std::vector<Taps> taps = axis_taps(in.height, height);
  const std::size_t row_stride = static_cast<std::size_t>(in.width) * 3;
  RgbImage out(in.width, height);
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < in.width; ++x) {
      for (int channel = 0; channel < 3; ++channel) {
        const std::uint8_t* first = in.at(x, taps[y].first) + channel;
        out.at(x, y)[channel] = weighted_sum(first, row_stride, taps[y]);
      }
    }
  }
  return out;
}

// Pillow 13 runs the vertical pass first when the height shrinks by more than twice as many
// pixels as the width (python-pillow/Pillow#9549, a speed-up for tall images); earlier Pillows
// always ran the horizontal pass first. Each pass rounds to 8 bits, so the order shows in the
// pixels. This condition matched the pinned Pillow 13.0.0 on 595 size pairs, none differing;
// for torchvision's Resize it means a picture more than twice as tall as it is wide.
bool vertical_pass_first(const RgbImage& image, int width, int height) {
  return height < image.height && image.height - height > 2 * (image.width - width);
}

}  // namespace

RgbImage resize_bilinear(RgbImage image, int width, int height) {
  // A pass whose side keeps its size is skipped, as in Pillow (not run as an identity, which
  // could round differently).
  if (vertical_pass_first(image, width, height)) image = resample_vertical(image, height);
  if (width != image.width) image = resample_horizontal(image, width);
  if (height != image.height) image = resample_vertical(image, height);
  return image;
}
