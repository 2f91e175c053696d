"""Command line of the build side: ``python -m resnet_mar <command>`` (the Makefile calls it)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from resnet_mar.architectures import (
    SUPPORTED_ARCHITECTURES,
    UnknownArchitectureError,
    check_architecture,
)
from resnet_mar.build import BuildError, BuildRequest, BuildResult, build_model
from resnet_mar.client import EXPLANATION_PROTOCOLS, PROTOCOLS, ClientError
from resnet_mar.evaluation import EvaluationError
from resnet_mar.kserve_storage import RUNTIMES, KServeError
from resnet_mar.labels import LabelMapError, torchvision_imagenet_categories, write_label_map
from resnet_mar.mobile import MobileError
from resnet_mar.parity import ParityError
from resnet_mar.photos import PhotosMissingError
from resnet_mar.quantization import (
    MAX_TOP1_ACCURACY_DROP,
    MAX_TOP1_PROBABILITY_ERROR,
    MIN_TOP1_AGREEMENT,
)
from resnet_mar.server_doors import ISOLATION_MODES
from resnet_mar.torchserve import ServerError
from resnet_mar.weights import WeightsError
from resnet_serving.serving_schema import MODEL_FORMATS, SchemaError

USER_ERRORS = (
    UnknownArchitectureError,
    WeightsError,
    LabelMapError,
    ParityError,
    BuildError,
    ServerError,
    SchemaError,
    KServeError,
    PhotosMissingError,
    ClientError,
    EvaluationError,
    MobileError,
)


def check_models(args: argparse.Namespace) -> None:
    """Every architecture named, and NAME with one of them, checked before the first (slow)
    build or export."""
    if args.name and len(args.models) != 1:
        raise BuildError("NAME renames one model: give exactly one entry in MODELS")
    for arch in args.models:
        check_architecture(arch)


def cmd_build(args: argparse.Namespace) -> None:
    check_models(args)
    for position, arch in enumerate(args.models, 1):
        request = BuildRequest(
            architecture=arch,
            weights=args.weights,
            labels=args.labels,
            name=args.name,
            model_format=args.format,
            jit=args.jit,
            seed=args.seed,
            jpeg_draft_factor=args.jpeg_draft,
            calibration=args.calibration,
            int8_min_agreement=args.int8_min_agreement,
            int8_max_error=args.int8_max_error,
            int8_data=args.int8_data,
            int8_max_drop=args.int8_max_drop,
        )
        jit = f", jit={args.jit}" if args.format == "torchscript" else ""
        print(
            f"[{position}/{len(args.models)}] {request.model_name}: {arch}, "
            f"weights={args.weights}, format={args.format}{jit} ...",
            flush=True,
        )
        result = build_model(request, args.out)
        print(
            f"    wrote {result.model_file} and {result.provenance_file} ({checked(result)})",
            flush=True,
        )


def cmd_mobile(args: argparse.Namespace) -> None:
    from resnet_mar.mobile import build_mobile

    check_models(args)
    for position, arch in enumerate(args.models, 1):
        name = args.name or arch
        print(f"[{position}/{len(args.models)}] {name}: ExecuTorch (XNNPACK) ...", flush=True)
        record = build_mobile(
            arch, args.weights, args.out, name=name, labels=args.labels, seed=args.seed,
            torchscript=args.build / f"{name}.pt",
        )  # fmt: skip
        latency = record["latency_ms_batch1"]
        compared = (
            f"; TorchScript {record['torchscript_size_bytes'] / 1e6:.1f} MB, "
            f"{latency['torchscript']} ms"
            if "torchscript" in latency
            else f"; no TorchScript build of {name} in {args.build} to compare with"
        )
        print(
            f"    wrote {args.out}/{name}.pte ({record['size_bytes'] / 1e6:.1f} MB, "
            f"{latency['executorch']} ms an image{compared}), checked against eager: max "
            f"|logit diff| {record['parity']['max_abs_diff']:.2g}, top-5 identical",
            flush=True,
        )


def checked(result: BuildResult) -> str:
    """What the build checked the compiled model against, in a few words."""
    if "labelled_quality" in result.provenance:
        q = result.provenance["labelled_quality"]
        return (
            f"int8 vs FP32 on {q['images']} labelled images of {q['data']}: top-1 "
            f"{q['int8_top1']:.1%} vs {q['fp32_top1']:.1%}, a drop of {q['drop']:.1%} "
            f"(allowed {q['max_drop_allowed']:.1%})"
        )
    if "quality" in result.provenance:
        q = result.provenance["quality"]
        return (
            f"int8 vs FP32 on {q['photos']} held-aside photos: top-1 agreement "
            f"{q['top1_agreement']:.0%}, top-5 overlap {q['mean_top5_overlap']:.0%}, top-1 "
            f"probability within {q['max_top1_probability_error']:.3f}"
        )
    parity = result.provenance["parity"]
    return (
        f"parity: top-5 identical, max |diff| {parity['max_abs_diff']:.2e} "
        f"<= {parity['tolerance']:.2e} on {parity['inputs']} images: photos and random, "
        f"{len(parity['checked_on'])} batches"
    )


def cmd_labels(args: argparse.Namespace) -> None:
    categories = torchvision_imagenet_categories()
    path = write_label_map(categories, args.out)
    print(f"wrote {path} ({len(categories)} ImageNet classes from torchvision's weights metadata)")


def cmd_serve(args: argparse.Namespace) -> None:
    from resnet_mar.server_doors import ServerFolder
    from resnet_mar.torchserve import start_server, stop_server, wait_until_ready

    names = sorted(mar.stem for mar in args.model_store.glob("*.mar"))
    if not names:
        raise ServerError(f"no archive in {args.model_store}: run make archive")
    folder = ServerFolder(args.folder.resolve())
    server = start_server(
        args.model_store,
        ["all"],
        folder,
        args.config.read_text(),
        isolation=args.isolation,
    )
    if server.exposure:
        print(server.exposure, file=sys.stderr, flush=True)
    print(f"serve: TorchServe started from {folder.root} (logs in {folder.logs}); loading {names}")
    try:
        statuses = wait_until_ready(
            server.endpoints.management,
            names,
            timeout_s=args.timeout,
            log_file=server.log_file,
            process=server.process,
        )
    except ServerError:
        stop_server(server.state, drain_s=0, exit_s=10)
        raise
    for name in names:
        print(f"{name}: {len(statuses[name])} worker(s) READY")
        print(f"  curl -T photo.jpg {server.endpoints.inference}/predictions/{name}")
        print(f"  curl -T photo.jpg {server.endpoints.inference}/explanations/{name}")
    if server.endpoints.grpc:
        print(f"Open Inference gRPC (inference.GRPCInferenceService): {server.endpoints.grpc}")
    socket = server.endpoints.management.removeprefix("unix:")
    print(f"management (owner only): curl --unix-socket {socket} http://localhost/models")
    print(f"metrics: curl {server.endpoints.metrics}/metrics    stop: make stop RUN={args.folder}")


def cmd_stop(args: argparse.Namespace) -> None:
    from resnet_mar.server_doors import ServerFolder
    from resnet_mar.torchserve import ServerState, stop_server

    folder = ServerFolder(args.folder.resolve())
    if not folder.state.exists():
        leftovers = folder.tmp.exists()
        shutil.rmtree(folder.tmp, ignore_errors=True)
        removed = f"; removed its temporary files ({folder.tmp})" if leftovers else ""
        print(f"stop: no server runs from {folder.root}{removed}")
        return
    report = stop_server(ServerState.load(folder), drain_s=args.drain)
    print(f"stop: {report}; nothing of it is left running")


def cmd_kserve(args: argparse.Namespace) -> None:
    from resnet_mar.kserve_storage import Deployment, write_storage

    deployment = Deployment(
        name=args.service,
        protocol=args.protocol,
        storage_uri=args.storage_uri,
        cpus=args.cpus,
        memory=args.memory,
        runtime=args.runtime,
        image=args.image,
    )
    archives = [args.model_store / f"{name}.mar" for name in args.models]
    written = write_storage(archives, args.out, deployment, config_text=args.config.read_text())
    for path in written:
        print(f"wrote {path}")
    applied = " and ".join(str(p) for p in written if p.suffix == ".yaml")
    print(
        f"kserve: copy {args.out}/config and {args.out}/model-store to {args.storage_uri}, then "
        f"kubectl apply -f each of {applied} (README: Run on KServe)"
    )


def cmd_predict(args: argparse.Namespace) -> None:
    from resnet_mar.client import predict

    url = args.url or inference_address(args.config)
    for image in args.images:
        answer = predict(url, args.model, image, topk=args.topk, protocol=args.protocol)
        print(f"{image}: {json.dumps(answer, ensure_ascii=False)}")


def cmd_explain(args: argparse.Namespace) -> None:
    from PIL import Image

    from resnet_mar.client import explain
    from resnet_mar.explanation_overlay import overlay

    url = args.url or inference_address(args.config)
    answer = explain(url, args.model, args.image, protocol=args.protocol)
    try:
        with Image.open(args.image) as photo:
            picture = overlay(photo, answer, args.size)
    except ValueError as err:
        raise ClientError(str(err)) from None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(args.out)
    print(
        f"{args.image}: {answer['label']} ({answer['probability']:.3f}); its attribution over "
        f"the crop {args.model} saw -> {args.out}"
    )


def cmd_eval(args: argparse.Namespace) -> None:
    from resnet_mar.evaluation import evaluate

    archives = [args.model_store / f"{name}.mar" for name in args.models]
    missing = [str(archive) for archive in archives if not archive.is_file()]
    if missing:
        raise ClientError(f"no archive {', '.join(missing)}: make archive first")
    url = args.url
    if url is None and args.config.is_file():
        url = inference_address(args.config)
    evaluate(args.data, archives, args.out, url=url, sample=args.sample, baseline=args.baseline)
    print(f"eval: {args.out}/report.md, eval.json and accuracy.png")


def inference_address(config: Path) -> str:
    """The inference address of the config make serve started the server with."""
    from resnet_mar.server_doors import config_addresses

    try:
        found = config_addresses(config.read_text()).get("inference")
    except OSError as err:
        raise ClientError(f"cannot read {config}: {err.strerror}; pass --url") from None
    if found is None:
        raise ClientError(f"{config} has no inference_address; pass --url")
    return found


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m resnet_mar", description=__doc__)
    sub = root.add_subparsers(dest="command", required=True)

    build = sub.add_parser("build", help="compile models and write their archive inputs")
    build.add_argument(
        "--models",
        nargs="+",
        default=["resnet18", "resnet50"],
        help=f"any of: {' '.join(SUPPORTED_ARCHITECTURES)}",
    )
    build.add_argument(
        "--weights",
        default="DEFAULT",
        help="DEFAULT, a weights entry (IMAGENET1K_V2), none, or a checkpoint path",
    )
    build.add_argument("--labels", type=Path, help="label map JSON for a checkpoint")
    build.add_argument("--name", help="served name for a single model (default: its arch)")
    build.add_argument("--format", default="torchscript", choices=MODEL_FORMATS)
    build.add_argument(
        "--jit",
        default="script",
        help="FORMAT=torchscript: script (compiles the code, keeps control flow) or trace "
        "(records one run on real photos; for models script cannot compile)",
    )
    build.add_argument("--seed", type=int, default=0, help="seed of untrained weights")
    build.add_argument(
        "--jpeg-draft",
        type=int,
        metavar="FACTOR",
        help="0 (the schema's default): decode JPEGs fully (exact answers); 2: reduced-scale "
        "decoding of JPEGs over 2 x 2 x resize_size (faster, answers move slightly)",
    )
    build.add_argument(
        "--calibration", type=Path, help="FORMAT=int8: a folder of calibration images"
    )
    build.add_argument(
        "--int8-min-agreement",
        type=float,
        default=MIN_TOP1_AGREEMENT,
        help="FORMAT=int8: the share of held-aside photos whose top-1 must equal FP32's",
    )
    build.add_argument(
        "--int8-max-error",
        type=float,
        default=MAX_TOP1_PROBABILITY_ERROR,
        help="FORMAT=int8: the largest error allowed on the probability of FP32's top-1 class",
    )
    build.add_argument(
        "--int8-data",
        type=Path,
        help="FORMAT=int8: labelled images (class folders or a path,label CSV): gate on their "
        "top-1 accuracy instead of agreement on held-aside photos",
    )
    build.add_argument(
        "--int8-max-drop",
        type=float,
        default=MAX_TOP1_ACCURACY_DROP,
        help="FORMAT=int8 with --int8-data: the top-1 accuracy int8 may lose against FP32",
    )
    build.add_argument("--out", type=Path, default=Path("build"))
    build.set_defaults(func=cmd_build)

    labels = sub.add_parser("labels", help="write the ImageNet index_to_name.json")
    labels.add_argument("--out", type=Path, default=Path("index_to_name.json"))
    labels.set_defaults(func=cmd_labels)

    serve = sub.add_parser("serve", help="start TorchServe with every archive, wait until READY")
    serve.add_argument("--config", type=Path, default=Path("config.properties"))
    serve.add_argument("--model-store", type=Path, default=Path("model_store"))
    serve.add_argument("--folder", type=Path, default=Path("run"), help="the server's own folder")
    serve.add_argument("--timeout", type=float, default=300, help="seconds to wait for READY")
    serve.add_argument(
        "--isolation",
        default="auto",
        choices=ISOLATION_MODES,
        help="auto: a network namespace of its own where the kernel allows one, else serve "
        "without and say what stays reachable; namespace: refuse to start without one; none",
    )
    serve.set_defaults(func=cmd_serve)

    stop = sub.add_parser("stop", help="drain and stop the server make serve started")
    stop.add_argument("--folder", type=Path, default=Path("run"))
    stop.add_argument("--drain", type=float, default=30, help="seconds to answer queued requests")
    stop.set_defaults(func=cmd_stop)

    kserve = sub.add_parser("kserve", help="write a KServe storage folder and InferenceService")
    kserve.add_argument("--model-store", type=Path, default=Path("model_store"))
    kserve.add_argument("--models", nargs="+", required=True, help="archive names to include")
    kserve.add_argument("--out", type=Path, default=Path("build/kserve"))
    kserve.add_argument(
        "--runtime",
        default="own",
        choices=RUNTIMES,
        help="own: this toolkit's image (make image) as a ServingRuntime; kserve-torchserve: "
        "KServe's TorchServe runtime (TorchScript and AOTInductor archives only)",
    )
    kserve.add_argument("--image", default="resnet-mar:latest", help="the own runtime's image")
    kserve.add_argument(
        "--config",
        type=Path,
        default=Path("config.properties"),
        help="the own runtime's TorchServe settings (their ports are the pod's)",
    )
    kserve.add_argument("--protocol", required=True, help="v1, v2 or grpc-v2")
    kserve.add_argument("--storage-uri", required=True, help="pvc://claim/folder, s3://bucket/...")
    kserve.add_argument("--service", required=True, help="the InferenceService's name")
    kserve.add_argument("--cpus", required=True, help="the pod's CPU request and limit")
    kserve.add_argument("--memory", required=True, help="the pod's memory request and limit")
    kserve.set_defaults(func=cmd_kserve)

    predict = sub.add_parser("predict", help="send images to a served model")
    server_arguments(predict)
    predict.add_argument("--topk", type=int)
    predict.add_argument(
        "--protocol",
        default="predictions",
        choices=PROTOCOLS,
        help="predictions (/predictions, raw bytes), v1 (KServe) or v2 (Open Inference)",
    )
    predict.add_argument("images", nargs="+", type=Path)
    predict.set_defaults(func=cmd_predict)

    explain = sub.add_parser(
        "explain", help="draw a served model's explanation of a photo over the photo (PNG)"
    )
    server_arguments(explain)
    explain.add_argument(
        "--protocol",
        default="predictions",
        choices=EXPLANATION_PROTOCOLS,
        help="predictions (/explanations) or v1 (KServe :explain)",
    )
    explain.add_argument("--out", type=Path, required=True, help="the picture to write (PNG)")
    explain.add_argument("--size", type=int, default=448, help="side of the drawn crop, pixels")
    explain.add_argument("image", type=Path)
    explain.set_defaults(func=cmd_explain)
    eval_parser(sub)

    mobile = sub.add_parser(
        "mobile", help="export models to ExecuTorch (.pte, XNNPACK), checked against eager"
    )
    mobile.add_argument("--models", nargs="+", default=["resnet18"], metavar="ARCH")
    mobile.add_argument("--weights", default="DEFAULT", help="as for build")
    mobile.add_argument("--labels", type=Path, help="label map JSON for a checkpoint")
    mobile.add_argument("--name", help="file name for a single model (default: its arch)")
    mobile.add_argument("--seed", type=int, default=0, help="seed of untrained weights")
    mobile.add_argument("--out", type=Path, default=Path("build/mobile"))
    mobile.add_argument(
        "--build", type=Path, default=Path("build"), help="where TorchScript builds are compared"
    )
    mobile.set_defaults(func=cmd_mobile)
    return root


def eval_parser(sub: Any) -> None:
    evaluation = sub.add_parser(
        "eval", help="top-1/top-5 accuracy of archives on a labelled folder or CSV"
    )
    evaluation.add_argument(
        "--data", type=Path, required=True, help="a folder of class folders, or a path,label CSV"
    )
    evaluation.add_argument("--models", nargs="+", required=True, help="archive names")
    evaluation.add_argument("--model-store", type=Path, default=Path("model_store"))
    evaluation.add_argument("--out", type=Path, default=Path("results/eval"))
    server_arguments(evaluation, one_model=False)
    evaluation.add_argument(
        "--sample", type=int, help="served accuracy on the first N images only (default: all)"
    )
    evaluation.add_argument(
        "--baseline", help="the model the others are compared with (paired differences)"
    )
    evaluation.set_defaults(func=cmd_eval)


def server_arguments(command: argparse.ArgumentParser, *, one_model: bool = True) -> None:
    """Where the served model is: the commands that call a running server share these."""
    command.add_argument(
        "--url", help="the server's inference address (default: the one in --config)"
    )
    command.add_argument(
        "--config",
        type=Path,
        default=Path("config.properties"),
        help="the TorchServe settings make serve used (CONFIG), for its inference address",
    )
    if one_model:
        command.add_argument("--model", default="resnet18")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
