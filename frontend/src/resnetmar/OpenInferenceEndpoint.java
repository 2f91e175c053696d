package resnetmar;

import com.google.gson.Gson;
import com.google.gson.JsonArray;
import com.google.gson.JsonObject;
import io.netty.handler.codec.http.FullHttpRequest;
import java.io.IOException;
import java.lang.reflect.Field;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.Map;
import java.util.UUID;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.pytorch.serve.job.Job;
import org.pytorch.serve.servingsdk.Context;
import org.pytorch.serve.servingsdk.ModelServerEndpoint;
import org.pytorch.serve.servingsdk.annotations.Endpoint;
import org.pytorch.serve.servingsdk.annotations.helpers.EndpointTypes;
import org.pytorch.serve.servingsdk.http.Request;
import org.pytorch.serve.servingsdk.http.Response;
import org.pytorch.serve.util.messages.InputParameter;
import org.pytorch.serve.util.messages.RequestInput;
import org.pytorch.serve.util.messages.WorkerCommands;
import org.pytorch.serve.wlm.Model;
import org.pytorch.serve.wlm.ModelManager;
import org.pytorch.serve.wlm.WorkerState;

/**
 * The Open Inference Protocol's REST paths on TorchServe's inference port, served by TorchServe
 * itself: a frontend plugin (plugins_path) of TorchServe's serving SDK.
 *
 * <p>TorchServe 0.12 answers /v2, /v2/health/live and /v2/health/ready with constants (ready even
 * with no worker) and has no model metadata or model readiness over REST, so the protocol's
 * clients report "not ready" while the server serves. The SDK routes a plugin by the first path
 * segment, so this plugin owns all of /v2: health and metadata from TorchServe's own model and
 * worker registry, and inference (/infer, /explain) queued as TorchServe queues /predictions
 * (the same job queue, batching and 503 when full), answered with the handler's status,
 * headers and body unchanged.
 */
@Endpoint(
        urlPattern = "v2",
        endpointType = EndpointTypes.INFERENCE,
        description = "Open Inference Protocol: health, metadata and inference")
public class OpenInferenceEndpoint extends ModelServerEndpoint {

    private static final Gson GSON = new Gson();
    private static final Pattern MODEL_PATH =
            Pattern.compile("^/v2/models/([^/]+)(?:/versions/([^/]+))?(/ready|/infer|/explain)?/?$");
    private static final Pattern MODEL_FORMAT =
            Pattern.compile("(?m)^\\s*model_format:\\s*'?(\\w+)'?\\s*$");
    /** Each archive format, as the protocol's "platform" names it. */
    private static final Map<String, String> PLATFORMS =
            Map.of(
                    "torchscript", "pytorch_torchscript",
                    "onnx", "onnxruntime_onnx",
                    "aoti", "pytorch_aoti",
                    "openvino", "openvino_onnx",
                    "int8", "openvino_int8");

    @Override
    public void doGet(Request req, Response rsp, Context ctx) throws IOException {
        String path = path(req);
        switch (path) {
            case "/v2":
            case "/v2/":
                JsonObject server = new JsonObject();
                server.addProperty("name", "resnet-mar (TorchServe)");
                server.addProperty("version", torchServeVersion());
                JsonArray extensions = new JsonArray();
                extensions.add("binary_tensor_data");
                server.add("extensions", extensions);
                json(rsp, 200, server);
                return;
            case "/v2/health/live":
                json(rsp, 200, flag("live", true));
                return;
            case "/v2/health/ready":
                boolean ready = !ModelManager.getInstance().getDefaultModels().isEmpty();
                for (Model model : ModelManager.getInstance().getDefaultModels().values()) {
                    ready &= loadedWorkers(model) > 0;
                }
                json(rsp, ready ? 200 : 503, flag("ready", ready));
                return;
            default:
                break;
        }
        Matcher found = MODEL_PATH.matcher(path);
        if (!found.matches() || "/infer".equals(found.group(3)) || "/explain".equals(found.group(3))) {
            error(rsp, found.matches() ? 405 : 404, notFound(path, found.matches()));
            return;
        }
        Model model = model(rsp, found.group(1), found.group(2));
        if (model == null) {
            return;
        }
        if ("/ready".equals(found.group(3))) {
            JsonObject answer = flag("ready", loadedWorkers(model) > 0);
            answer.addProperty("name", model.getModelName());
            json(rsp, answer.get("ready").getAsBoolean() ? 200 : 503, answer);
        } else {
            json(rsp, 200, metadata(model));
        }
    }

    @Override
    public void doPost(Request req, Response rsp, Context ctx) throws IOException {
        String path = path(req);
        Matcher found = MODEL_PATH.matcher(path);
        if (!found.matches() || found.group(3) == null || "/ready".equals(found.group(3))) {
            error(rsp, found.matches() ? 405 : 404, notFound(path, found.matches()));
            return;
        }
        Model model = model(rsp, found.group(1), found.group(2));
        if (model != null) {
            infer(req, rsp, model, "/explain".equals(found.group(3)));
        }
    }

    /** Queue the request as TorchServe queues /predictions, and answer as the handler did. */
    private static void infer(Request req, Response rsp, Model model, boolean explain)
            throws IOException {
        RequestInput input = new RequestInput(UUID.randomUUID().toString());
        FullHttpRequest http = nettyRequest(req);
        for (Map.Entry<String, String> header : http.headers().entries()) {
            input.updateHeaders(header.getKey(), header.getValue());
        }
        input.updateHeaders("explain", explain ? "True" : "False");
        byte[] body = req.getInputStream().readAllBytes();
        String contentType = req.getContentType() == null ? "" : req.getContentType();
        input.addParameter(new InputParameter("body", body, contentType.split(";")[0].trim()));
        Answer answer =
                new Answer(model.getModelName(), model.getVersion(), input);
        try {
            if (!ModelManager.getInstance().addJob(answer)) {
                error(rsp, 503, "model " + model.getModelName() + " is busy (its queue is full)"
                        + " or has no worker: retry later");
                return;
            }
            long waitS = model.getResponseTimeout() + 60L;
            answer.done.get(waitS, TimeUnit.SECONDS).send(rsp);
        } catch (TimeoutException e) {
            error(rsp, 504, "no answer from model " + model.getModelName() + " in time");
        } catch (Exception e) {
            error(rsp, 500, "inference failed: " + e.getMessage());
        }
    }

    /** A queued inference: completes with what the worker answered. */
    private static final class Answer extends Job {
        final CompletableFuture<Sent> done = new CompletableFuture<>();

        Answer(String model, String version, RequestInput input) {
            super(model, version, WorkerCommands.PREDICT, input);
        }

        @Override
        public void response(
                byte[] body,
                CharSequence contentType,
                int status,
                String phrase,
                Map<String, String> headers) {
            done.complete(new Sent(body, contentType, status, phrase, headers));
        }

        @Override
        public void sendError(int status, String error) {
            JsonObject answer = new JsonObject();
            answer.addProperty("error", error);
            byte[] body = GSON.toJson(answer).getBytes(StandardCharsets.UTF_8);
            done.complete(new Sent(body, "application/json", status, null, null));
        }

        @Override
        public boolean isOpen() {
            return true;
        }
    }

    private record Sent(
            byte[] body,
            CharSequence contentType,
            int status,
            String phrase,
            Map<String, String> headers) {
        void send(Response rsp) throws IOException {
            if (phrase == null || phrase.isEmpty()) {
                rsp.setStatus(status);
            } else {
                rsp.setStatus(status, phrase);
            }
            if (headers != null) {
                for (Map.Entry<String, String> header : headers.entrySet()) {
                    rsp.setHeader(header.getKey(), header.getValue());
                }
            }
            if (contentType != null && contentType.length() > 0) {
                rsp.setContentType(contentType.toString());
            }
            rsp.getOutputStream().write(body == null ? new byte[0] : body);
        }
    }

    private static JsonObject metadata(Model model) throws IOException {
        JsonObject answer = new JsonObject();
        answer.addProperty("name", model.getModelName());
        JsonArray versions = new JsonArray();
        try {
            for (Map.Entry<String, Model> version :
                    ModelManager.getInstance().getAllModelVersions(model.getModelName())) {
                versions.add(version.getKey());
            }
        } catch (Exception e) {
            versions.add(model.getVersion());
        }
        answer.add("versions", versions);
        answer.addProperty("platform", platform(model));
        JsonArray inputs = new JsonArray();
        inputs.add(tensor("image", "BYTES", -1));
        answer.add("inputs", inputs);
        JsonArray outputs = new JsonArray();
        outputs.add(tensor("labels", "BYTES", -1, -1));
        outputs.add(tensor("probabilities", "FP32", -1, -1));
        answer.add("outputs", outputs);
        return answer;
    }

    /** The archive's format (its model-config.yaml, handler.model_format) as a platform. */
    private static String platform(Model model) throws IOException {
        java.io.File config = new java.io.File(model.getModelDir(), "model-config.yaml");
        if (!config.isFile()) {
            return "";
        }
        Matcher found = MODEL_FORMAT.matcher(Files.readString(config.toPath()));
        return found.find() ? PLATFORMS.getOrDefault(found.group(1), found.group(1)) : "";
    }

    private static JsonObject tensor(String name, String datatype, long... shape) {
        JsonObject tensor = new JsonObject();
        tensor.addProperty("name", name);
        tensor.addProperty("datatype", datatype);
        JsonArray dims = new JsonArray();
        for (long dim : shape) {
            dims.add(dim);
        }
        tensor.add("shape", dims);
        return tensor;
    }

    private static int loadedWorkers(Model model) {
        return (int)
                ModelManager.getInstance().getWorkers(model.getModelVersionName()).stream()
                        .filter(w -> w.getState() == WorkerState.WORKER_MODEL_LOADED)
                        .count();
    }

    /** The model (a version of it, or its default), or null after answering 404. */
    private static Model model(Response rsp, String name, String version) throws IOException {
        Model model = null;
        try {
            model = ModelManager.getInstance().getModel(name, version);
        } catch (Exception e) {
            model = null;
        }
        if (model == null) {
            error(rsp, 404, "model " + name + (version == null ? "" : " version " + version)
                    + " is not served here");
        }
        return model;
    }

    private static String notFound(String path, boolean wrongMethod) {
        return wrongMethod
                ? "this method is not allowed on " + path
                : path + " is not an Open Inference Protocol path served here";
    }

    private static String path(Request req) {
        String uri = req.getRequestURI();
        int query = uri.indexOf('?');
        return query < 0 ? uri : uri.substring(0, query);
    }

    private static JsonObject flag(String name, boolean value) {
        JsonObject answer = new JsonObject();
        answer.addProperty(name, value);
        return answer;
    }

    private static void error(Response rsp, int status, String message) throws IOException {
        JsonObject answer = new JsonObject();
        answer.addProperty("error", message);
        json(rsp, status, answer);
    }

    private static void json(Response rsp, int status, JsonObject answer) throws IOException {
        rsp.setStatus(status);
        rsp.setContentType("application/json");
        rsp.getOutputStream().write(GSON.toJson(answer).getBytes(StandardCharsets.UTF_8));
    }

    private static String torchServeVersion() {
        Package found = ModelManager.class.getPackage();
        String version = found == null ? null : found.getImplementationVersion();
        return version == null ? "unknown" : version;
    }

    /** The SDK's request hides its headers' values; the Netty request it wraps has them. */
    private static FullHttpRequest nettyRequest(Request req) throws IOException {
        try {
            Field field = req.getClass().getDeclaredField("req");
            field.setAccessible(true);
            return (FullHttpRequest) field.get(req);
        } catch (ReflectiveOperationException e) {
            throw new IOException("cannot read the request's headers: " + e, e);
        }
    }
}
