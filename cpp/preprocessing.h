// The geometric half of torchvision's ImageClassification transform (resize, centre crop),
// with the parameters the toolkit's build stores in the TorchScript file.
#pragma once

#include <array>
#include <string>

#include "rgb_image.h"

// resnet_mar.weights.Preprocessing, as export_torchscript writes it to preprocessing.json.
struct Preprocessing {
  int resize_size = 0;
  int crop_size = 0;
  std::array<float, 3> mean{};
  std::array<float, 3> std{};
};

// Parses preprocessing.json; throws InputError when it is malformed or asks for an
// interpolation other than bilinear (the only one reimplemented here).
Preprocessing parse_preprocessing(const std::string& json_text);

// Resize([resize_size]) then CenterCrop(crop_size), as torchvision does them to a PIL image.
RgbImage model_crop(RgbImage picture, const Preprocessing& preprocessing);
