"""KServe v1 and v2 calls made by KServe's own Python client (``kserve`` SDK,
InferenceRESTClient).

Runs in its own venv (.venv-clients/kserve), never imports this project. Reads a job from stdin:
{"base_url": "http://host:port", "model": name, "protocol": "v1"|"v2", "binary": bool,
 "requests": [{"images": [base64...], "topk": k, "id": s}]}
("binary": v2 images set with ``set_data_from_numpy``'s default, binary tensors)
and prints one result per request, sent 8 at a time: v1 {"predictions": [...]}, v2
{"id", "outputs": {name: {"shape", "datatype", "data"}}}, or {"status", "error"} for a refusal.
"""

import asyncio
import base64
import json
import sys

import httpx
import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig


async def infer(client: InferenceRESTClient, job: dict, request: dict) -> dict:
    topk = {"topk": request["topk"]} if request.get("topk") else {}
    try:
        if job["protocol"] == "v1":
            body = {"instances": [{"b64": image} for image in request["images"]], **topk}
            return await client.infer(job["base_url"], body, model_name=job["model"])
        if job.get("binary"):
            raw = [base64.b64decode(image) for image in request["images"]]
            images = InferInput("image", [len(raw)], "BYTES")
            images.set_data_from_numpy(np.array(raw, dtype=object))
        else:
            images = InferInput("image", [len(request["images"])], "BYTES", request["images"])
        call = InferRequest(
            model_name=job["model"],
            request_id=request["id"],
            parameters=topk or None,
            infer_inputs=[images],
        )
        result = await client.infer(job["base_url"], call, model_name=job["model"])
        return {
            "id": result.id,
            "outputs": {
                o.name: {"shape": list(o.shape), "datatype": o.datatype, "data": values(o)}
                for o in result.outputs
            },
        }
    except httpx.HTTPStatusError as err:
        return {"status": err.response.status_code, "error": err.response.json().get("error")}


def values(output) -> list:
    """An output's elements, sent as JSON or binary (BYTES as text)."""
    found = output.as_numpy().flatten().tolist()
    return [x.decode() if isinstance(x, bytes) else x for x in found]


async def main() -> None:
    job = json.load(sys.stdin)
    client = InferenceRESTClient(RESTConfig(protocol=job["protocol"], timeout=300, retries=0))
    try:
        results = []
        for start in range(0, len(job["requests"]), 8):
            chunk = job["requests"][start : start + 8]
            results += await asyncio.gather(*(infer(client, job, r) for r in chunk))
    finally:
        await client.close()
    print(json.dumps(results))


if __name__ == "__main__":
    asyncio.run(main())
