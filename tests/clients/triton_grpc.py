"""tritonclient[grpc] as Triton's users call it, every setting left at its default (BYTES
inputs travel in raw_input_contents), against the Open Inference gRPC service.

Runs in its own venv (.venv-clients/triton), never imports this project. Reads a job from stdin:
{"url": "host:port", "model": name, "version": v or "", "requests": [{"images": [base64...],
"topk": k}]} and prints {"health": {...}, "results": [...]}: each health call's answer (or its
error), and per request {"labels", "probabilities"} as tritonclient decodes them, or
{"status", "error"} for a refusal. Requests are sent 8 at a time.
"""

import base64
import json
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


def called(call) -> object:
    try:
        answer = call()
    except InferenceServerException as err:
        return {"status": err.status(), "error": err.message()}
    return {"answer": answer}


def health(client: grpcclient.InferenceServerClient, model: str) -> dict:
    return {
        "server_live": called(client.is_server_live),
        "server_ready": called(client.is_server_ready),
        "model_ready": called(lambda: client.is_model_ready(model)),
        "unknown_model_ready": called(lambda: client.is_model_ready("no-such-model")),
        "server_metadata": called(lambda: client.get_server_metadata(as_json=True)),
        "model_metadata": called(lambda: client.get_model_metadata(model, as_json=True)),
    }


def infer(client: grpcclient.InferenceServerClient, job: dict, request: dict) -> dict:
    raw = [base64.b64decode(image) for image in request["images"]]
    images = grpcclient.InferInput("image", [len(raw)], "BYTES")
    images.set_data_from_numpy(np.array(raw, dtype=object))
    parameters = {"topk": request["topk"]} if request.get("topk") else None
    try:
        result = client.infer(
            job["model"], [images], model_version=job.get("version", ""), parameters=parameters
        )
    except InferenceServerException as err:
        return {"status": err.status(), "error": err.message()}
    return {
        "labels": [[x.decode() for x in row] for row in result.as_numpy("labels").tolist()],
        "probabilities": result.as_numpy("probabilities").tolist(),
    }


def main() -> None:
    job = json.load(sys.stdin)
    client = grpcclient.InferenceServerClient(url=job["url"])
    checked = health(client, job["model"])
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda r: infer(client, job, r), job["requests"]))
    print(json.dumps({"health": checked, "results": results}, default=str))


if __name__ == "__main__":
    main()
