"""Check InferenceService and ServingRuntime documents against KServe's own schema: the ``kserve``
SDK's generated model classes (V1beta1InferenceService, V1alpha1ServingRuntime and everything
below them, Kubernetes' own classes for
metadata, resources, probes and env). Every key must be a field of its class and every value
of the field's type, recursively: an unknown or misspelt key, or a wrong type, is an error.

Runs in its own venv (.venv-clients/kserve), never imports this project. Reads a JSON list of
documents from stdin and prints a JSON list of error lists, one per document.
"""

import json
import re
import sys

import kserve
import kubernetes.client as k8s

SCALARS = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "datetime": (str,),
    "date": (str,),
    "object": (object,),
}
LIST = re.compile(r"^(?:list|List)\[(.*)\]$")
DICT = re.compile(r"^(?:dict\(str, ?|Dict\[str, ?)(.*)[)\]]$")


def model_class(name: str):
    return (
        getattr(kserve, name, None)
        or getattr(kserve.models, name, None)
        or getattr(k8s, name, None)
    )


def errors(value, type_name: str, path: str) -> list[str]:
    if match := LIST.match(type_name):
        if not isinstance(value, list):
            return [f"{path}: expected a list ({type_name})"]
        return [
            e for i, item in enumerate(value) for e in errors(item, match.group(1), f"{path}[{i}]")
        ]
    if match := DICT.match(type_name):
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping ({type_name})"]
        return [e for k, item in value.items() for e in errors(item, match.group(1), f"{path}.{k}")]
    if type_name in SCALARS:
        ok = isinstance(value, SCALARS[type_name]) and not (
            type_name in ("int", "float") and isinstance(value, bool)
        )
        return [] if ok else [f"{path}: expected {type_name}, got {value!r}"]
    cls = model_class(type_name)
    if cls is None:
        return [f"{path}: no class {type_name!r} in the kserve SDK"]
    if not isinstance(value, dict):
        return [f"{path}: expected an object ({type_name})"]
    fields = {json_key: attr for attr, json_key in cls.attribute_map.items()}
    found = []
    for key, item in value.items():
        if key not in fields:
            found.append(f"{path}.{key}: unknown field of {type_name}")
        elif item is not None:
            found += errors(item, cls.openapi_types[fields[key]], f"{path}.{key}")
    return found


#: The documents make kserve writes: kind -> (apiVersion, the SDK's class).
KINDS = {
    "InferenceService": ("serving.kserve.io/v1beta1", "V1beta1InferenceService"),
    "ServingRuntime": ("serving.kserve.io/v1alpha1", "V1alpha1ServingRuntime"),
}


def validate(document: dict) -> list[str]:
    kind = document.get("kind")
    if kind not in KINDS:
        return [f"$.kind: {kind!r}"]
    api_version, class_name = KINDS[kind]
    found = []
    if document.get("apiVersion") != api_version:
        found.append(f"$.apiVersion: {document.get('apiVersion')!r}")
    return found + errors(document, class_name, "$")


if __name__ == "__main__":
    print(json.dumps([validate(document) for document in json.load(sys.stdin)]))
