// build/classify: one JPEG or PNG through a TorchScript model built by this toolkit, in C++
// with libtorch, no Python at run time. Prints the TorchServe handler's answer for it:
// {"label": probability, ...}, the top 5, best first.
//
// The answer should equal the Python in-process reference (the same model file, torchvision's
// transforms on a Pillow picture): decoding follows the handler's conventions, the resize is
// Pillow's reimplemented bit for bit, and the normalisation uses torchvision's torch ops.
#include <torch/script.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "image_decoding.h"
#include "label_map.h"
#include "preprocessing.h"
#include "rgb_image.h"

namespace {

constexpr const char* kUsage =
    "usage: classify [--save-crop CROP.ppm] MODEL.pt IMAGE [LABELS.json]\n"
    "  MODEL.pt     TorchScript model written by the toolkit's build (make script), which\n"
    "               carries its preprocessing\n"
    "  IMAGE        JPEG or PNG file\n"
    "  LABELS.json  label map; default: <model dir>/<model name>/index_to_name.json, else\n"
    "               <model dir>/index_to_name.json\n"
    "  --save-crop  also write the resized and cropped pixels the model sees (binary PPM)\n"
    "Prints the top 5 as JSON, {\"label\": probability, ...}, best first.\n"
    "Exit status: 0 answered, 1 unusable image, model or label map, 2 wrong arguments.\n";

// The extra file resnet_mar/export.py stores the preprocessing in.
constexpr const char* kPreprocessingFile = "preprocessing.json";

// The handler's default top-k.
constexpr std::int64_t kTopK = 5;

struct Arguments {
  std::string model;
  std::string image;
  std::string labels;  // empty: found next to the model
  std::string save_crop;
};

class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

Arguments parse_arguments(const std::vector<std::string>& args) {
  Arguments parsed;
  std::vector<std::string> positional;
  for (std::size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--save-crop" && i + 1 < args.size()) {
      parsed.save_crop = args[++i];
    } else if (args[i].rfind("-", 0) == 0) {
      throw UsageError("unknown option " + args[i]);
    } else {
      positional.push_back(args[i]);
    }
  }
  if (positional.size() < 2 || positional.size() > 3) {
    throw UsageError("expected MODEL.pt IMAGE [LABELS.json]");
  }
  parsed.model = positional[0];
  parsed.image = positional[1];
  if (positional.size() == 3) parsed.labels = positional[2];
  return parsed;
}

std::vector<std::uint8_t> read_file(const std::string& path) {
  if (!std::filesystem::is_regular_file(path)) throw InputError("no such file");
  std::ifstream file(path, std::ios::binary);
  if (!file) throw InputError("cannot open the file");
  return {std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>()};
}

// The line of an error that says what went wrong: a c10::Error's first (a C++ stack trace
// follows), otherwise the last (the TorchScript interpreter puts the script's traceback first).
std::string error_line(const std::exception& error) {
  if (const auto* torch_error = dynamic_cast<const c10::Error*>(&error)) {
    const std::string text = torch_error->what_without_backtrace();
    return text.substr(0, text.find('\n'));
  }
  std::string text = error.what();
  text.erase(text.find_last_not_of(" \n") + 1);
  return text.substr(text.rfind('\n') + 1);
}

struct Model {
  torch::jit::Module module;
  Preprocessing preprocessing;
};

Model load_model(const std::string& path) {
  if (!std::filesystem::is_regular_file(path)) throw InputError(path + ": no such file");
  torch::jit::ExtraFilesMap extra_files{{kPreprocessingFile, ""}};
  Model model;
  try {
    model.module = torch::jit::load(path, torch::kCPU, extra_files);
  } catch (const std::exception& error) {
    throw InputError(path + " is not a TorchScript model: " + error_line(error));
  }
  const std::string& preprocessing = extra_files[kPreprocessingFile];
  if (preprocessing.empty()) {
    throw InputError(path + " carries no " + kPreprocessingFile +
                     ": build it with this toolkit's make script (resnet_mar/export.py)");
  }
  try {
    model.preprocessing = parse_preprocessing(preprocessing);
  } catch (const InputError& error) {
    throw InputError(path + ": " + kPreprocessingFile + ": " + error.what());
  }
  model.module.eval();
  return model;
}

RgbImage read_picture(const std::string& path) {
  try {
    return decode_image(read_file(path));
  } catch (const InputError& error) {
    throw InputError(path + ": " + error.what());
  }
}

void write_ppm(const RgbImage& image, const std::string& path) {
  std::ofstream file(path, std::ios::binary);
  file << "P6\n" << image.width << ' ' << image.height << "\n255\n";
  file.write(reinterpret_cast<const char*>(image.pixels.data()),
             static_cast<std::streamsize>(image.pixels.size()));
  if (!file) throw InputError("cannot write " + path);
}

// The arithmetic half of ImageClassification with torchvision's own ops, in its order and on
// its layout: pil_to_tensor's permuted view of height x width x RGB pixels, which makes the
// batch channels-last, so the model runs the same kernels as on the Python reference's input.
torch::Tensor model_input(const RgbImage& crop, const Preprocessing& preprocessing) {
  const torch::Tensor pixels =
      torch::from_blob(const_cast<std::uint8_t*>(crop.pixels.data()),
                       {crop.height, crop.width, 3}, torch::kUInt8)
          .permute({2, 0, 1});
  const torch::Tensor mean =
      torch::tensor(std::vector<float>(preprocessing.mean.begin(), preprocessing.mean.end()))
          .view({-1, 1, 1});
  const torch::Tensor std =
      torch::tensor(std::vector<float>(preprocessing.std.begin(), preprocessing.std.end()))
          .view({-1, 1, 1});
  return pixels.to(torch::kFloat).div(255).sub_(mean).div_(std).unsqueeze(0);
}

torch::Tensor class_probabilities(torch::jit::Module& module, const torch::Tensor& input) {
  const torch::InferenceMode inference_mode;
  torch::Tensor logits;
  try {
    logits = module.forward({input}).toTensor();
  } catch (const std::exception& error) {
    throw InputError("the model cannot classify a 1x3x" + std::to_string(input.size(2)) + "x" +
                     std::to_string(input.size(3)) + " image: " + error_line(error));
  }
  if (logits.dim() != 2 || logits.size(0) != 1) {
    throw InputError("the model answers a tensor of shape " + c10::str(logits.sizes()) +
                     ", not one row of class scores");
  }
  return logits.softmax(1)[0];
}

// The handler's encode_response: ImageNet repeats two names ("crane", "maillot"), and a
// repeated label keeps its best score.
nlohmann::ordered_json top_answer(const torch::Tensor& probabilities,
                                  const std::vector<std::string>& labels) {
  const auto [scores, indices] = probabilities.topk(std::min(kTopK, probabilities.size(0)));
  nlohmann::ordered_json answer = nlohmann::ordered_json::object();
  for (std::int64_t i = 0; i < scores.size(0); ++i) {
    const std::string& label = labels[indices[i].item<std::int64_t>()];
    if (!answer.contains(label)) answer[label] = static_cast<double>(scores[i].item<float>());
  }
  return answer;
}

void classify(const Arguments& args) {
  // The image first: a bad one is refused without the second it takes to load a model.
  RgbImage picture = read_picture(args.image);
  Model model = load_model(args.model);
  const std::string labels_path = args.labels.empty() ? find_label_map(args.model) : args.labels;
  const std::vector<std::string> labels = read_label_map(labels_path);
  const RgbImage crop = model_crop(std::move(picture), model.preprocessing);
  if (!args.save_crop.empty()) write_ppm(crop, args.save_crop);
  const torch::Tensor probabilities =
      class_probabilities(model.module, model_input(crop, model.preprocessing));
  if (probabilities.size(0) != static_cast<std::int64_t>(labels.size())) {
    throw InputError("the model has " + std::to_string(probabilities.size(0)) +
                     " outputs but the label map " + labels_path + " has " +
                     std::to_string(labels.size()) + " labels");
  }
  std::cout << top_answer(probabilities, labels).dump(2) << '\n';
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  if (args.size() == 1 && (args[0] == "--help" || args[0] == "-h")) {
    std::cout << kUsage;
    return 0;
  }
  try {
    classify(parse_arguments(args));
    return 0;
  } catch (const UsageError& error) {
    std::cerr << "classify: " << error.what() << '\n' << kUsage;
    return 2;
  } catch (const InputError& error) {
    std::cerr << "classify: " << error.what() << '\n';
    return 1;
  } catch (const std::exception& error) {
    std::cerr << "classify: " << error_line(error) << '\n';
    return 1;
  }
}
