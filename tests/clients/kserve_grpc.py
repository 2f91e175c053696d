"""The Open Inference gRPC calls made by KServe's own Python client (``kserve`` SDK,
InferenceGRPCClient), its defaults left as they are.

Runs in its own venv (.venv-clients/kserve), never imports this project. Reads a job from stdin:
{"url": "host:port", "model": name, "requests": [{"images": [base64...], "topk": k, "id": s}]}
and prints {"live", "ready", "model_ready", "results": [...]}: per request {"id", "outputs":
{name: {"shape", "datatype", "data"}}}, or {"status", "error"} for a refusal.
"""

import asyncio
import base64
import json
import sys

import grpc
import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest


def values(output) -> list:
    found = output.as_numpy().flatten().tolist()
    return [x.decode() if isinstance(x, bytes) else x for x in found]


async def infer(client: InferenceGRPCClient, job: dict, request: dict) -> dict:
    raw = [base64.b64decode(image) for image in request["images"]]
    images = InferInput("image", [len(raw)], "BYTES")
    images.set_data_from_numpy(np.array(raw, dtype=object))
    topk = {"topk": request["topk"]} if request.get("topk") else None
    call = InferRequest(
        model_name=job["model"], request_id=request["id"], parameters=topk, infer_inputs=[images]
    )
    try:
        result = await client.infer(call)
    except grpc.RpcError as err:
        return {"status": err.code().name, "error": err.details()}
    return {
        "id": result.id,
        "outputs": {
            o.name: {"shape": list(o.shape), "datatype": o.datatype, "data": values(o)}
            for o in result.outputs
        },
    }


async def main() -> None:
    job = json.load(sys.stdin)
    client = InferenceGRPCClient(job["url"], timeout=300)
    found = {
        "live": await client.is_server_live(),
        "ready": await client.is_server_ready(),
        "model_ready": await client.is_model_ready(job["model"]),
    }
    found["results"] = await asyncio.gather(*(infer(client, job, r) for r in job["requests"]))
    await client.close()
    print(json.dumps(found))


if __name__ == "__main__":
    asyncio.run(main())
