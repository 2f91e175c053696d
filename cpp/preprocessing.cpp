#include "preprocessing.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "pillow_resize.h"

namespace {

int positive_int(const nlohmann::json& json, const char* key) {
  const int value = json.at(key).get<int>();
  if (value <= 0) throw InputError(std::string(key) + " must be positive");
  return value;
}

// torchvision turns the (double) values into a float32 tensor; so does this.
std::array<float, 3> three_floats(const nlohmann::json& json, const char* key) {
  const std::vector<double> values = json.at(key).get<std::vector<double>>();
  if (values.size() != 3) throw InputError(std::string(key) + " must hold 3 values (R, G, B)");
  return {static_cast<float>(values[0]), static_cast<float>(values[1]),
          static_cast<float>(values[2])};
}

// torchvision's _compute_resized_output_size for a single size: the shorter side becomes
// `size`, the longer int(size * longer / shorter), truncated as Python's int() does.
std::pair<int, int> resized_size(int width, int height, int size) {
  const int shorter = std::min(width, height);
  const int longer = std::max(width, height);
  const int new_longer = static_cast<int>(static_cast<double>(size) * longer / shorter);
  return width <= height ? std::pair{size, new_longer} : std::pair{new_longer, size};
}

// torchvision's center_crop: int(round((size - crop) / 2.0)), where Python rounds halves to
// even (nearbyint does too, in the default rounding mode); an image smaller than the crop is
// padded with (crop - size) // 2 black pixels before it.
int crop_offset(int size, int crop) {
  if (crop > size) return -((crop - size) / 2);
  return static_cast<int>(std::nearbyint((size - crop) / 2.0));
}

RgbImage centre_crop(const RgbImage& image, int crop) {
  const int left = crop_offset(image.width, crop);
  const int top = crop_offset(image.height, crop);
  RgbImage out(crop, crop);
  for (int y = 0; y < crop; ++y) {
    const int source_y = top + y;
    if (source_y < 0 || source_y >= image.height) continue;
    for (int x = 0; x < crop; ++x) {
      const int source_x = left + x;
      if (source_x < 0 || source_x >= image.width) continue;
      std::copy_n(image.at(source_x, source_y), 3, out.at(x, y));
    }
  }
  return out;
}

}  // namespace

Preprocessing parse_preprocessing(const std::string& json_text) {
  try {
    const nlohmann::json json = nlohmann::json::parse(json_text);
    const std::string interpolation = json.at("interpolation").get<std::string>();
    if (interpolation != "bilinear") {
      throw InputError("interpolation '" + interpolation +
                       "' is not supported (only Pillow's bilinear is reimplemented here)");
    }
    Preprocessing preprocessing;
    preprocessing.resize_size = positive_int(json, "resize_size");
    preprocessing.crop_size = positive_int(json, "crop_size");
    preprocessing.mean = three_floats(json, "mean");
    preprocessing.std = three_floats(json, "std");
    if (std::count(preprocessing.std.begin(), preprocessing.std.end(), 0.0f) > 0) {
      throw InputError("std must not hold 0");
    }
    return preprocessing;
  } catch (const nlohmann::json::exception& error) {
    throw InputError(std::string("malformed: ") + error.what());
  }
}

RgbImage model_crop(RgbImage picture, const Preprocessing& preprocessing) {
  const auto [width, height] =
      resized_size(picture.width, picture.height, preprocessing.resize_size);
  return centre_crop(resize_bilinear(std::move(picture), width, height),
                     preprocessing.crop_size);
}
