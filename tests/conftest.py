import gc
import os
import shutil

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# No JAX persistent compilation cache in the user's cache directory during
# tests: a run would otherwise read programs an earlier run wrote.
# tests/run_backends.py (`make test`) gives each run a fresh directory
# instead; tests/test_compilation_cache.py turns it on in its own processes.
os.environ.setdefault("TRANSFER_COMPILATION_CACHE", "0")

import keras  # noqa: E402
import pytest  # noqa: E402

import transfer  # noqa: E402

TINY_BLOCKS = ("^stem_", "^block1_", "^block2_")


def _tiny_cnn_builder(weights, input_shape):
    inputs = keras.Input(input_shape)
    x = inputs
    for name, filters, strides in (("stem", 8, 1), ("block1", 12, 2), ("block2", 16, 2)):
        x = keras.layers.Conv2D(filters, 3, strides=strides, padding="same",
                                use_bias=False, name=f"{name}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
        x = keras.layers.ReLU(name=f"{name}_relu")(x)
    model = keras.Model(inputs, x, name="tiny_cnn")
    if weights is not None and weights != "imagenet":
        model.load_weights(weights)
    return model, {"weights": None if weights is None else str(weights),
                   "source": "tests"}


TINY_CNN = transfer.BackboneSpec(
    name="tiny_cnn",
    source="tests",
    builder=_tiny_cnn_builder,
    image_size=32,
    min_image_size=16,
    scale=1.0 / 255.0,
    blocks=TINY_BLOCKS,
    weights=(),
    description="3 conv blocks for tests",
)
transfer.register_backbone(TINY_CNN, override=True)


# Tests marked `backend_independent` run once, on this backend: `make test`
# runs the suite on all three, and running these three times tested the same
# code three times (they were about half of the JAX and torch runs' time).
DEFAULT_BACKEND = "tensorflow"
ALL_BACKENDS_ENV = "TRANSFER_TEST_ALL_BACKENDS"


def pytest_addoption(parser):
    parser.addoption("--run_large", action="store_true", default=False,
                     help="run tests that need the network or big backbones")


def pytest_configure(config):
    config.addinivalue_line("markers", "large: needs the network or a big backbone")
    config.addinivalue_line("markers", "requires_backend(*names): backend-only test")
    config.addinivalue_line(
        "markers", "browser: drives headless Debian chromium; skipped without it")
    config.addinivalue_line(
        "markers",
        "backend_independent: what it tests does not depend on the Keras "
        "backend (files, processes, argument checks); runs on the default "
        f"backend ({DEFAULT_BACKEND}) only, unless {ALL_BACKENDS_ENV}=1")
    config.addinivalue_line(
        "markers", "all_backends: runs on every backend in a file marked "
                   "backend_independent")


def chromium_binary():
    """Path of a chromium executable, or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def pytest_collection_finish(session):
    # Every test ends with `keras.backend.clear_session()`, whose garbage
    # collection walked the ~450,000 objects of the imported TensorFlow,
    # Keras, JAX and torch modules each time (0.3-0.4 s a test, a few
    # minutes a suite). Those live for the whole session: freezing them once
    # here leaves each collection only what the tests made.
    gc.collect()
    gc.freeze()


def pytest_collection_modifyitems(config, items):
    backend = keras.config.backend()
    skip_large = pytest.mark.skip(reason="needs --run_large")
    skip_browser = pytest.mark.skip(
        reason="no chromium on PATH; install it with "
               "`apt-get install chromium` (or `make browser`)")
    has_browser = chromium_binary() is not None
    for item in items:
        if "large" in item.keywords and not config.getoption("--run_large"):
            item.add_marker(skip_large)
        if "browser" in item.keywords and not has_browser:
            item.add_marker(skip_browser)
        if ("backend_independent" in item.keywords and backend != DEFAULT_BACKEND
                and item.get_closest_marker("all_backends") is None
                and os.environ.get(ALL_BACKENDS_ENV) != "1"):
            item.add_marker(pytest.mark.skip(
                reason=f"backend-independent: runs on {DEFAULT_BACKEND} only "
                       f"({ALL_BACKENDS_ENV}=1 runs it here too)"))
        marker = item.get_closest_marker("requires_backend")
        if marker is not None and backend not in marker.args:
            item.add_marker(pytest.mark.skip(
                reason=f"runs on {marker.args}, not {backend}"))


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1337)
    yield
    keras.backend.clear_session()


@pytest.fixture
def tiny_data():
    return transfer.synthetic_images(num_samples=16, image_size=32, num_classes=2, seed=0)


@pytest.fixture
def tiny_model():
    return transfer.build_classifier("tiny_cnn", 2, weights=None, dropout=0.0)


TINY_CLASS_NAMES = ["cat", "dog"]
TINY_RECIPE = (("head", 1, 1e-2, 0), ("top", 2, 5e-3, 1))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One finished two-stage `fit_recipe` run (epochs 0 | 1, 2), shared."""
    keras.utils.set_random_seed(1337)
    run_dir = str(tmp_path_factory.mktemp("tiny_run") / "run")
    model = transfer.build_classifier("tiny_cnn", 2, weights=None, dropout=0.0)
    data = transfer.synthetic_images(num_samples=16, image_size=32, num_classes=2, seed=0)
    histories = transfer.fit_recipe(
        model, [transfer.Stage(*s) for s in TINY_RECIPE], data,
        validation_data=data, run_dir=run_dir, batch_size=8,
        class_names=TINY_CLASS_NAMES, verbose=0,
    )
    keras.backend.clear_session()
    return {"run_dir": run_dir, "histories": histories,
            "class_names": TINY_CLASS_NAMES, "recipe": TINY_RECIPE}
