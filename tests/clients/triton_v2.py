"""Open Inference Protocol (v2) calls made by tritonclient[http], the client Triton users have.

Runs in its own venv (.venv-clients/triton), never imports this project. Reads a job from stdin:
{"url": "host:port", "model": name, "requests": [{"images": [base64...], "topk": k, "id": s}]}
and prints one result per request, sent 8 at a time: {"id", "labels", "probabilities"} as
tritonclient decodes them, or {"status", "error"} as it reports a refusal.
"""

import json
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def infer(url: str, model: str, request: dict) -> dict:
    client = httpclient.InferenceServerClient(url=url, network_timeout=300)
    images = httpclient.InferInput("image", [len(request["images"])], "BYTES")
    images.set_data_from_numpy(np.array(request["images"], dtype=object), binary_data=False)
    outputs = [
        httpclient.InferRequestedOutput(name, binary_data=False)
        for name in ("labels", "probabilities")
    ]
    parameters = {"topk": request["topk"]} if request.get("topk") else None
    try:
        result = client.infer(
            model, inputs=[images], outputs=outputs, request_id=request["id"], parameters=parameters
        )
    except InferenceServerException as err:
        return {"status": err.status(), "error": err.message()}
    labels = result.as_numpy("labels")
    return {
        "id": result.get_response().get("id"),
        "labels": [
            [x.decode() if isinstance(x, bytes) else x for x in row] for row in labels.tolist()
        ],
        "probabilities": result.as_numpy("probabilities").tolist(),
    }


def main() -> None:
    job = json.load(sys.stdin)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda r: infer(job["url"], job["model"], r), job["requests"]))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
