// The model's class names: the index_to_name.json the toolkit's build writes next to a model.
#pragma once

#include <string>
#include <vector>

// Class names in index order from {"0": "tench", ...} or {"0": ["n01440764", "tench"], ...}
// (the last item is the name, as TorchServe reads it); indices must run 0..N-1 without gaps.
std::vector<std::string> read_label_map(const std::string& path);

// The label map of a model given none: <model dir>/<model name>/index_to_name.json, where
// make script writes it (build/resnet18.pt -> build/resnet18/index_to_name.json), else
// <model dir>/index_to_name.json, as in an unpacked .mar. Throws InputError naming both.
std::string find_label_map(const std::string& model_path);
