"""``make bench``: how close the served model gets to the machine's limit, and to the stock setup.

For each model (untrained weights: speed does not depend on them) one run measures, side by side:

* the in-process limit: the very file the server serves, loaded in this process as our handler
  loads it but with all cores, fed preprocessed photos at batch sizes 1..16 (TorchScript in
  both input layouts), no server, no decoding -- the ceiling any serving setup can reach here;
  and the same file on one thread at the limit's batch and layout (how the limit scales with
  cores);
* the machine's FP32 matmul peak and each model's GFLOP per image, so that each limit reads as
  a share of what the cores can compute;
* our served model (our handler, our model-config.yaml, the project's config.properties,
  the workers' environment ``make serve`` sets);
* the stock setup: the same ``.pt`` archived with ``--handler image_classifier`` and no
  model-config, served by TorchServe's default configuration (only loopback addresses, free
  ports and no token authorization changed);
* the same for every other format served (by default FORMAT=onnx, openvino and int8; the int8
  models built against a gate untrained networks can pass);
* our TorchScript archive asked over the Open Inference Protocol (``/v2/models/<m>/infer``) at
  16 clients, against ``/predictions``;
* the cost of a 12-megapixel JPEG against a 0.3-megapixel one, at concurrency 1;
* the CPU the handler's exact preprocessing costs per photo (which the limit leaves out), and
  each limit again after the served measurements (the machine's speed drifts).

Our setups serve every model from one server, as ``make serve`` does: each model is measured
while the others idle, then all of them are loaded at once (the models must share the machine,
not collapse). The stock setup serves each model alone. One server runs at a time and is always
stopped; the load comes from ``load_client`` (closed loop, real JPEG photos, loopback only).
Outputs: ``report.md`` (tables and the headline ratios), ``bench.json`` (every raw number) and
``bench.png`` (throughput and p99 against concurrency).

The process exits 0 when a target is missed (this is a report); it fails only when the run breaks.

One job per module: what is sent and what is served, as data (``setups``), building and
archiving it (``archives``), the machine and the other load on it (``machine``), the in-process
limit, preprocessing cost, FP32 peak and GFLOP (``limit``), the load (``load_client``), serving
and sweeping (``served``), the results as dataclasses and ``bench.json`` (``results``), the
targets and the notes (``headline``), ``report.md`` (``report``), ``bench.png`` (``plot``) and
the run itself (``cli``, ``python -m resnet_mar.bench``).
"""
