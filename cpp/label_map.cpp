#include "label_map.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "rgb_image.h"

namespace {

constexpr const char* kLabelMapName = "index_to_name.json";

nlohmann::json parse_json_file(const std::string& path) {
  std::ifstream file(path);
  if (!file) throw InputError("cannot read the label map " + path);
  try {
    return nlohmann::json::parse(file);
  } catch (const nlohmann::json::parse_error& error) {
    throw InputError("the label map " + path + " is not valid JSON: " + error.what());
  }
}

bool is_class_index(const std::string& key, std::size_t classes) {
  const bool digits = !key.empty() && key.size() < 10 &&
                      std::all_of(key.begin(), key.end(),
                                  [](unsigned char c) { return std::isdigit(c) != 0; });
  return digits && std::stoul(key) < classes;
}

std::string class_name(const nlohmann::json& value) {
  const nlohmann::json& name = value.is_array() && !value.empty() ? value.back() : value;
  return name.is_string() ? name.get<std::string>() : std::string();
}

}  // namespace

std::vector<std::string> read_label_map(const std::string& path) {
  const nlohmann::json map = parse_json_file(path);
  if (!map.is_object() || map.empty()) {
    throw InputError("the label map " + path + R"( must be a non-empty object {"0": "name", ...})");
  }
  std::vector<std::string> names(map.size());
  for (const auto& [key, value] : map.items()) {
    if (!is_class_index(key, map.size())) {
      throw InputError("the label map " + path + ": indices must run 0.." +
                       std::to_string(map.size() - 1) + " without gaps, found key '" + key + "'");
    }
    std::string name = class_name(value);
    if (name.empty()) throw InputError("the label map " + path + ": class " + key + " has no name");
    names[std::stoul(key)] = std::move(name);
  }
  // Two keys for one index ("1" and "01") leave another index without a name.
  if (std::count(names.begin(), names.end(), std::string()) > 0) {
    throw InputError("the label map " + path + ": indices must run 0.." +
                     std::to_string(map.size() - 1) + " without gaps or repeats");
  }
  return names;
}

std::string find_label_map(const std::string& model_path) {
  const std::filesystem::path model(model_path);
  const std::filesystem::path beside_in_folder = model.parent_path() / model.stem() / kLabelMapName;
  const std::filesystem::path beside = model.parent_path() / kLabelMapName;
  for (const auto& candidate : {beside_in_folder, beside}) {
    if (std::filesystem::is_regular_file(candidate)) return candidate.string();
  }
  throw InputError("no label map for " + model_path + ": neither " + beside_in_folder.string() +
                   " nor " + beside.string() + " exists; give one as the third argument");
}
