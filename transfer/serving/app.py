"""The HTTP application of `transfer serve`: a run's model behind Starlette.

`create_app(model)` returns an ASGI application (run it with uvicorn, or
call it in-process with Starlette's `TestClient`):

- `POST /predict`: one image, as a multipart upload (field `image`), as
  JSON `{"image": "<base64>", "top_k": 3}`, or as the raw bytes with an
  `image/*` content type; `top_k` may also be a query parameter. Answers
  `{"predictions": [{"class": name, "probability": p}, ...]}`, best first,
  calibrated with the run's temperature; with `reject_below`, also
  `label` (the best class or `"unknown"`), `unknown_reason` and
  `ood_score` (`transfer.prediction.labelled_outputs`).
- `GET /health`: `{"status": "ok", ...}` with the classes and counters.
- `GET /`: one self-contained HTML page (no external script or style) to
  drop an image on and see its classes.

Images are read exactly as `transfer predict` reads them
(`transfer.data.image_files.read_image`: RGB, 16-bit scaled, resized
to the model's size with the run's interpolation) and predicted with the same function
(`transfer.prediction.image_outputs`, then `labelled_outputs`), in
batches gathered across
concurrent requests (`transfer.serving.batcher.Batcher`).

Every error is a 4xx (or 500) answer with a one-line JSON body
`{"error": "..."}`, and the service carries on: 413 for a body over
`max_request_bytes` or an image over `max_image_pixels` (checked from the
header, before decoding), 415 for another content type, 400 for bytes that
are not an image, bad base64 or a bad `top_k`.

Starlette is an optional dependency (`pip install "keras-transfer[serve]"`):
this module imports it, so import it only after
`transfer.serving.server.check_dependencies()`.
"""

import asyncio
import base64
import binascii
import contextlib
import io
import json
import logging
import os
import threading

import keras
import numpy as np
from PIL import Image
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.responses import HTMLResponse
from starlette.responses import JSONResponse
from starlette.routing import Route

from transfer import _model_info
from transfer import calibration
from transfer import prediction
from transfer import workflow
from transfer.data import image_files
from transfer.serving import page
from transfer.serving.batcher import Batcher

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 10 * 1024 * 1024
# Lower than Pillow's 89.5 million: a 40-megapixel photo decodes to about
# 120 MB of RGB, and a server decodes several at once.
MAX_IMAGE_PIXELS = 40_000_000
DEFAULT_TOP_K = 5
# What the page's Content-Security-Policy allows: itself, and the preview
# of the chosen image (a blob: URL). Nothing is fetched from elsewhere.
_PAGE_POLICY = ("default-src 'none'; script-src 'unsafe-inline'; "
                "style-src 'unsafe-inline'; img-src blob: data:; "
                "connect-src 'self'; form-action 'none'; "
                "frame-ancestors 'none'")
_FORMATS = ("send a multipart/form-data upload with an `image` file field, "
            "JSON {\"image\": \"<base64>\"}, or the image bytes with an "
            "image/* Content-Type")


class _BodyTooLarge(HTTPException):
    def __init__(self, limit):
        super().__init__(413, (
            f"The request body is over the limit of {limit:,} bytes "
            "(`transfer serve --max-request-mb`); send a smaller image."))


class _BodyLimit:
    """ASGI middleware: a request body over `max_bytes` answers 413.

    A `Content-Length` over the limit is refused before the body is read;
    a body without one (chunked) is counted as it arrives.
    """

    def __init__(self, app, max_bytes):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.strip().isdigit() and int(length) > self.max_bytes:
            response = _error(_BodyTooLarge(self.max_bytes).detail, 413)
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)


def _error(message, status):
    """The one-line JSON answer of every error."""
    return JSONResponse({"error": " ".join(str(message).split())},
                        status_code=status)


async def _http_error(request, error):
    response = _error(error.detail, error.status_code)
    response.headers.update(error.headers or {})
    return response


async def _server_error(request, error):
    logger.error("Request %s %s failed: %r", request.method,
                 request.url.path, error)
    return _error(f"Internal error ({type(error).__name__}); the server "
                  "log has the details.", 500)


def _check_top_k(value, num_classes):
    if value is None or value == "":
        return min(DEFAULT_TOP_K, num_classes)
    try:
        top_k = int(value)
    except (TypeError, ValueError):
        top_k = None
    if isinstance(value, bool) or top_k is None or not (
        1 <= top_k <= num_classes
    ) or (isinstance(value, float) and value != top_k):
        raise HTTPException(400, (
            f"`top_k` must be an integer from 1 to {num_classes} (the "
            f"number of classes). Received: top_k={value!r}"))
    return top_k


def _decode_base64(text):
    if not isinstance(text, str) or not text:
        raise HTTPException(400, (
            "JSON requests need an `image` field holding the image file's "
            "bytes in base64: {\"image\": \"<base64>\"}."))
    if text.startswith("data:") and "," in text:  # a data: URL
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(
            400, "The `image` field is not valid base64.") from None


def read_upload(data, image_size, max_image_pixels=MAX_IMAGE_PIXELS, *,
                interpolation="bilinear"):
    """An uploaded image file's bytes, read as `transfer predict` reads files.

    The size is checked from the header before anything is decoded; then
    the bytes go through `transfer.data.image_files.read_image`, the
    prediction path's reader, from memory.

    Args:
        data: the bytes of an image file (PNG, JPEG, ...).
        image_size: the model's square input size.
        max_image_pixels: larger images are refused. Defaults to
            `40_000_000`.
        interpolation: how the image is resized: the run's, as `transfer
            predict` resizes. Defaults to `"bilinear"`.

    Returns:
        An `(image_size, image_size, 3)` `float32` array in `[0, 255]`.

    Raises:
        starlette.exceptions.HTTPException: 400 not an image, 413 too many
            pixels.
    """
    if not data:
        raise HTTPException(400, f"The request holds no image: {_FORMATS}.")
    try:
        with Image.open(io.BytesIO(data)) as image:  # the header only
            width, height = image.size
    except Image.DecompressionBombError as e:
        raise HTTPException(413, f"Refused from its header: {e}") from None
    except (Image.UnidentifiedImageError, OSError, SyntaxError, EOFError,
            ValueError):
        raise HTTPException(400, (
            "The upload is not an image Pillow can identify; send a PNG, "
            "JPEG, GIF, BMP or WebP file.")) from None
    if width * height > max_image_pixels:
        raise HTTPException(413, (
            f"The image is {width}x{height} pixels, over the limit of "
            f"{max_image_pixels:,} (`transfer serve --max-image-pixels`); "
            "refused from its header, not decoded. Send a smaller image."))
    try:
        return image_files.read_image(
            io.BytesIO(data), image_size, interpolation=interpolation,
            max_image_pixels=max_image_pixels)
    except ValueError as e:
        raise HTTPException(
            400, f"Cannot read the upload as an image ({e}).") from None


async def _read_request(request, num_classes):
    """`(image bytes, top_k)` of a `/predict` request."""
    content_type = request.headers.get("content-type", "")
    kind = content_type.split(";")[0].strip().lower()
    top_k = request.query_params.get("top_k")
    if kind == "multipart/form-data":
        async with request.form(max_files=1, max_fields=8) as form:
            upload = form.get("image") or form.get("file")
            if not isinstance(upload, UploadFile):
                raise HTTPException(400, (
                    "The multipart upload has no `image` file field: "
                    "`curl -F image=@rose.jpg ...`."))
            data = await upload.read()
            top_k = form.get("top_k") or top_k
    elif kind == "application/json":
        try:
            body = json.loads(await request.body())
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise HTTPException(
                400, "The body is not valid JSON.") from None
        if not isinstance(body, dict):
            body = {}
        data = _decode_base64(body.get("image"))
        top_k = body.get("top_k", top_k)
    elif kind.startswith("image/"):
        data = await request.body()
    else:
        raise HTTPException(415, (
            f"Unsupported Content-Type {content_type or '(none)'!r}: "
            f"{_FORMATS}."))
    return data, _check_top_k(top_k, num_classes)


def _batch_predictor(model, max_batch_size):
    """`predict(images) -> rows`: one model call per batch.

    Batches are padded to a power of two (at most `max_batch_size`), so
    the model sees a few shapes only (each new one is a trace or compile
    on TensorFlow and JAX); the padding rows are dropped.
    """

    def predict(images):
        count = len(images)
        size = min(max_batch_size, 1 << (count - 1).bit_length())
        batch = np.stack(images + [np.zeros_like(images[0])]
                         * (size - count))
        return list(prediction.image_outputs(model, batch)[:count])

    return predict


def create_app(model, *, title="transfer", max_request_bytes=MAX_REQUEST_BYTES,
               max_image_pixels=MAX_IMAGE_PIXELS, max_batch_size=8,
               max_delay=0.005, reject_below=None):
    """The `transfer serve` application of an image classifier.

    Use it to serve a model from Python, or under another ASGI server:
    `transfer serve RUN_DIR` runs it with uvicorn. The model's batches run
    in one worker thread, started and stopped with the application
    (its lifespan; Starlette's `TestClient` runs it inside `with`).

    Args:
        model: an image classifier from `transfer.workflow.load_run` (its
            metadata names the classes) taking `[0, 255]` pixels.
        title: the page's title, e.g. the run directory. Defaults to
            `"transfer"`.
        max_request_bytes: larger request bodies answer 413. Defaults to
            10 MiB.
        max_image_pixels: larger images answer 413, checked from their
            header. Defaults to `40_000_000`.
        max_batch_size: the most images per model call. Defaults to `8`.
        max_delay: seconds a batch waits for more requests. Defaults to
            `0.005`.
        reject_below: a probability in `(0, 1)`: answer `label`
            `"unknown"` below it, or for an image unlike the training data
            (`transfer.prediction.labelled_outputs`). Defaults to `None`.

    Returns:
        A `starlette.applications.Starlette` application; its
        `state.batcher` is the `Batcher`.

    Raises:
        ValueError: a text model, a limit that is not positive, or
            `reject_below` outside `(0, 1)`.
    """
    if workflow.run_modality(model) != "image":
        raise ValueError(
            "`transfer serve` serves image classifiers; this run's model "
            "classifies texts. Use `transfer predict` for text runs. "
            f"Received: modality={workflow.run_modality(model)!r}"
        )
    for name, value in (("max_request_bytes", max_request_bytes),
                        ("max_image_pixels", max_image_pixels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer. "
                             f"Received: {name}={value!r}")
    class_names = workflow.run_class_names(model)
    calibration.check_reject_below(reject_below)
    image_size = int(model.input_shape[1])
    interpolation = _model_info.interpolation(model)
    batcher = Batcher(_batch_predictor(model, max_batch_size),
                      max_batch_size=max_batch_size, max_delay=max_delay)
    # Decoding holds an image's pixels: a few at a time, not one per
    # connection (a thread lock: the event loop is not known yet).
    decoding = threading.BoundedSemaphore(max(2, os.cpu_count() or 1))

    def decode(data):
        with decoding:
            return read_upload(data, image_size, max_image_pixels,
                               interpolation=interpolation)

    async def index(request):
        html = page.render_page(title, class_names,
                                min(DEFAULT_TOP_K, len(class_names)))
        return HTMLResponse(html, headers={
            "Content-Security-Policy": _PAGE_POLICY,
            "Cache-Control": "no-store"})

    async def health(request):
        return JSONResponse({
            "status": "ok", "classes": class_names, "image_size": image_size,
            "temperature": calibration.temperature(model),
            "reject_below": reject_below,
            "backend": keras.config.backend(), **batcher.stats})

    async def predict(request):
        data, top_k = await _read_request(request, len(class_names))
        image = await run_in_threadpool(decode, data)
        row = await asyncio.wrap_future(batcher.submit(image))
        return JSONResponse(prediction.labelled_outputs(
            model, row[None], class_names, top_k, reject_below)[0])

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        try:
            yield
        finally:
            batcher.close()

    app = Starlette(
        routes=[Route("/", index, methods=["GET"]),
                Route("/health", health, methods=["GET"]),
                Route("/predict", predict, methods=["POST"])],
        middleware=[Middleware(_BodyLimit, max_bytes=max_request_bytes)],
        exception_handlers={HTTPException: _http_error,
                            Exception: _server_error},
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    app.state.class_names = class_names
    return app
