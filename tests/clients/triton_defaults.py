"""tritonclient[http] as Triton's users call it, every setting left at its default: binary
tensors both ways (``set_data_from_numpy``, ``InferRequestedOutput``, or no outputs at all), and
the server's health and metadata calls.

Runs in its own venv (.venv-clients/triton), never imports this project. Reads a job from stdin:
{"url": "host:port", "model": name, "requests": [{"images": [base64...], "topk": k,
"outputs": bool}]} and prints {"health": {...}, "results": [...]}: each health call's answer (or
its error), and per request {"labels", "probabilities"} as tritonclient decodes them, or
{"status", "error"} as it reports a refusal. Requests are sent 8 at a time.
"""

import base64
import json
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def called(call) -> object:
    try:
        return {"answer": call()}
    except InferenceServerException as err:
        return {"status": err.status(), "error": err.message()}


def health(client: httpclient.InferenceServerClient, model: str) -> dict:
    return {
        "server_live": called(client.is_server_live),
        "server_ready": called(client.is_server_ready),
        "model_ready": called(lambda: client.is_model_ready(model)),
        "server_metadata": called(client.get_server_metadata),
        "model_metadata": called(lambda: client.get_model_metadata(model)),
    }


def infer(url: str, model: str, request: dict) -> dict:
    client = httpclient.InferenceServerClient(url=url, network_timeout=300)
    raw = [base64.b64decode(image) for image in request["images"]]
    images = httpclient.InferInput("image", [len(raw)], "BYTES")
    images.set_data_from_numpy(np.array(raw, dtype=object))
    outputs = (
        [httpclient.InferRequestedOutput(name) for name in ("labels", "probabilities")]
        if request.get("outputs")
        else None
    )
    parameters = {"topk": request["topk"]} if request.get("topk") else None
    try:
        result = client.infer(model, inputs=[images], outputs=outputs, parameters=parameters)
    except InferenceServerException as err:
        return {"status": err.status(), "error": err.message()}
    return {
        "labels": [[x.decode() for x in row] for row in result.as_numpy("labels").tolist()],
        "probabilities": result.as_numpy("probabilities").tolist(),
    }


def main() -> None:
    job = json.load(sys.stdin)
    client = httpclient.InferenceServerClient(url=job["url"], network_timeout=60)
    checked = health(client, job["model"])
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda r: infer(job["url"], job["model"], r), job["requests"]))
    print(json.dumps({"health": checked, "results": results}, default=str))


if __name__ == "__main__":
    main()
