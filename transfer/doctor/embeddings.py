"""One embedding per image: a pretrained backbone's pooled features.

`feature_extractor` builds the model (a registered backbone with its
pretrained weights, or a finished run's trained model) from the images to
its `pooler` output, preprocessing inside, as `transfer.build_classifier`
builds it; a backbone without pretrained weights is refused, since random
features make every finding meaningless. `embed_files` streams the folder
batch by batch (`transfer.data.streams.read_batches`: a few batches in
memory) and keeps each embedding and a small thumbnail in an
`EmbeddingCache`, keyed by the file's sha256 and the model, so a second run
computes only new or changed files.
"""

import dataclasses
import hashlib
import io
import json
import logging
import os
import time

import keras
import numpy as np

from transfer import _backend
from transfer import _model_info
from transfer import workflow
from transfer._io import atomic_write
from transfer._io import sha256_file
from transfer.backbones.resolve import get_backbone_spec
from transfer.data import streams
from transfer.models.classifier import build_classifier
from transfer.training import run_dir as run_dir_lib
from transfer.weights.cache import cache_dir as user_cache_dir

logger = logging.getLogger(__name__)

# Thumbnails kept with each embedding: the projector's sprite, 32 pixels.
THUMBNAIL_SIZE = 32
_CACHE_VERSION = 1
# New embeddings written to the cache file every this many, so that an
# interrupted run over a large folder resumes where it stopped.
SAVE_EVERY = 2048


@dataclasses.dataclass
class Extractor:
    """A feature model and what it is.

    Attributes:
        model: images (RGB, `[0, 255]`) in, one vector per image out.
        image_size: the square input size.
        interpolation: how images are resized to it.
        description: the backbone (or run) and its weights, for reports.
        key: what the cache keys its embeddings by.
    """

    model: keras.Model
    image_size: int
    interpolation: str
    description: dict
    key: str


def _pooled(model):
    return keras.Model(model.inputs, model.get_layer("pooler").output,
                       name="doctor_features")


def _is_run_dir(backbone):
    return isinstance(backbone, str) and os.path.isfile(
        run_dir_lib.path(backbone, run_dir_lib.MODEL))


def _key(description):
    text = json.dumps(description, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def check_backbone(backbone, allow_random_weights=False):
    """The backbone's spec, or `None` for a run directory; refuses a
    backbone without pretrained weights (checked before any image is
    read)."""
    if _is_run_dir(backbone):
        return None
    spec = get_backbone_spec(backbone)
    if "imagenet" not in spec.weights and not allow_random_weights:
        raise ValueError(
            f"Backbone '{spec.name}' has no pretrained weights, and the "
            "doctor needs meaningful embeddings: with random weights, "
            "near-duplicates, outliers and label errors would be noise. "
            "Pass a pretrained backbone (efficientnet_lite0 ships offline; "
            "see transfer.list_backbones()) or a finished run's directory. "
            f"Received: backbone={spec.name!r}"
        )
    return spec


def feature_extractor(backbone, *, allow_random_weights=False):
    """The `Extractor` of a registered backbone or a run directory.

    Args:
        backbone: a registered name, `"hub:<preset>"`, a preset folder or
            `.keras` backbone file (with its pretrained weights), or the
            directory of a finished `transfer train` run (its trained
            model's features).
        allow_random_weights: let a backbone without pretrained weights
            through, randomly initialised (tests only: its embeddings mean
            nothing). Defaults to `False`.

    Raises:
        ValueError: an unknown backbone, or one without pretrained weights.
    """
    spec = check_backbone(backbone, allow_random_weights)
    if spec is None:
        model, _ = workflow.load_run(backbone)
        if workflow.run_modality(model) != "image" or "pooler" not in [
            layer.name for layer in model.layers
        ]:
            raise ValueError(
                f"The run '{backbone}' is not an image classifier made by "
                "`transfer train` (no 'pooler' layer to take features "
                "from). Pass an image run's directory, or a backbone name. "
                f"Received: backbone={backbone!r}"
            )
        metadata = _model_info.metadata(model)
        description = {
            "run_dir": os.path.abspath(backbone),
            "backbone": metadata.get("backbone"),
            "model_sha256": sha256_file(
                run_dir_lib.path(backbone, run_dir_lib.MODEL)),
        }
        return Extractor(_pooled(model), int(model.input_shape[1]),
                         _model_info.interpolation(model), description,
                         _key(description))
    weights = "imagenet" if "imagenet" in spec.weights else None
    model = build_classifier(spec, 2, weights=weights)
    info = _model_info.metadata(model).get("weights") or {}
    description = {
        "backbone": spec.name,
        "weights": info.get("weights"),
        "weights_source": info.get("source"),
        "weights_sha256": info.get("sha256"),
        "image_size": spec.image_size,
        "interpolation": spec.interpolation,
        "pooling": _model_info.metadata(model).get("pooling"),
    }
    if weights is None:
        # Random init differs every build: never reuse such embeddings.
        description["random_init"] = os.urandom(8).hex()
    return Extractor(_pooled(model), spec.image_size, spec.interpolation,
                     description, _key(description))


class EmbeddingCache:
    """Embeddings and thumbnails by file sha256, for one feature model.

    One `.npz` file per model key in `directory`; `save` rewrites it
    atomically when new entries were added. Deleting it is safe.

    Args:
        directory: where the cache file lives, or `None` for no cache.
        key: the feature model's key (`Extractor.key`).
    """

    def __init__(self, directory, key):
        self.directory = directory
        self.key = key
        self.entries = {}
        self.added = 0
        self.path = None if directory is None else os.path.join(
            directory, f"embeddings-{key}-v{_CACHE_VERSION}.npz")
        if self.path is not None and os.path.exists(self.path):
            try:
                with np.load(self.path) as stored:
                    for digest, vector, thumb in zip(
                        stored["hashes"], stored["embeddings"],
                        stored["thumbnails"], strict=True,
                    ):
                        self.entries[str(digest)] = (vector, thumb)
            except (OSError, ValueError, KeyError) as e:
                logger.warning("Ignoring unreadable embedding cache '%s': %s",
                               self.path, e)
                self.entries = {}

    def get(self, digest):
        return self.entries.get(digest)

    def put(self, digest, vector, thumbnail):
        self.entries[digest] = (vector, thumbnail)
        self.added += 1

    def save(self):
        """Writes the entries added since the last save (none: nothing)."""
        if self.path is None or not self.added:
            return
        self.added = 0
        digests = sorted(self.entries)
        buffer = io.BytesIO()
        np.savez(
            buffer, hashes=np.array(digests),
            embeddings=np.stack([self.entries[d][0] for d in digests]),
            thumbnails=np.stack([self.entries[d][1] for d in digests]),
        )
        data = buffer.getvalue()
        atomic_write(self.path, lambda f: f.write(data), size=len(data))


def default_cache_dir():
    """`~/.cache/keras-transfer/doctor` (see `transfer.weights.cache`)."""
    return user_cache_dir("doctor")


def _thumbnail(image):
    from PIL import Image  # Pillow: installed with the data loaders

    pixels = np.clip(np.round(image), 0, 255).astype("uint8")
    small = Image.fromarray(pixels).resize(
        (THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.BOX)
    return np.asarray(small, dtype="uint8")


@dataclasses.dataclass
class Embedded:
    """What `embed_files` returns.

    Attributes:
        hashes: each file's sha256.
        embeddings: `(n, d)` float32; rows of unreadable files are zero.
        thumbnails: `(n, 32, 32, 3)` uint8.
        reasons: why each file could not be read, `None` for read ones.
        cached: files answered from the cache.
        seconds: `{"hash", "embed"}` wall-clock seconds.
    """

    hashes: list
    embeddings: np.ndarray
    thumbnails: np.ndarray
    reasons: list
    cached: int
    seconds: dict


def embed_files(paths, extractor, cache, *, batch_size=32, verbose=1):
    """Embeds every file once (the cache first), batch by batch.

    Files with the same bytes are embedded once. Unreadable files are
    skipped and get their reason.

    Returns:
        An `Embedded`.
    """
    started = time.perf_counter()
    hashes = [sha256_file(path) for path in paths]
    hashed = time.perf_counter()
    todo, seen = [], set()
    for path, digest in zip(paths, hashes, strict=True):
        if cache.get(digest) is None and digest not in seen:
            seen.add(digest)
            todo.append((path, digest))
    reasons_by_hash = {}
    progress = keras.utils.Progbar(len(todo), verbose=verbose,
                                   unit_name="image")
    done = 0
    by_path = dict(todo)
    for batch_paths, results in streams.read_batches(
        [path for path, _ in todo], "image", extractor.image_size,
        batch_size, extractor.interpolation,
    ):
        good = [(path, image) for path, (image, reason)
                in zip(batch_paths, results, strict=True) if reason is None]
        for path, (_, reason) in zip(batch_paths, results, strict=True):
            if reason is not None:
                reasons_by_hash[by_path[path]] = reason
        if good:
            images = np.stack([image for _, image in good])
            vectors = np.asarray(
                _backend.predict_on_batch(extractor.model, images),
                dtype="float32")
            for (path, image), vector in zip(good, vectors, strict=True):
                cache.put(by_path[path], vector, _thumbnail(image))
        done += len(batch_paths)
        progress.update(done)
        if cache.added >= SAVE_EVERY:
            cache.save()  # an interrupted run keeps what it embedded
    cache.save()
    dimension = next((entry[0].shape[-1] for entry in cache.entries.values()),
                     0)
    embeddings = np.zeros((len(paths), dimension), "float32")
    thumbnails = np.zeros((len(paths), THUMBNAIL_SIZE, THUMBNAIL_SIZE, 3),
                          "uint8")
    reasons = []
    for i, digest in enumerate(hashes):
        entry = cache.get(digest)
        if entry is None:
            reasons.append(reasons_by_hash.get(digest, "not embedded"))
            continue
        embeddings[i], thumbnails[i] = entry
        reasons.append(None)
    return Embedded(
        hashes, embeddings, thumbnails, reasons,
        cached=sum(1 for digest in hashes if digest not in seen),
        seconds={"hash": round(hashed - started, 3),
                 "embed": round(time.perf_counter() - hashed, 3)},
    )
