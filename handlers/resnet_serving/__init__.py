"""What runs inside TorchServe beside the handler (``handlers/resnet_handler.py``): its stages
(protocols, payloads, options, decoding, resize and crop, errors, binary tensors), the serving
schema, the runtimes, explanations, the CPU budget, the compute gate, the envelope bypass and the
request metrics. archive.sh packs this package into every archive; it imports only the standard
library, torch, Pillow, numpy and TorchServe (onnxruntime, openvino and captum for the formats and
explanations that need them), never the build package."""
