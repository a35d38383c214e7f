"""Calibrated probabilities, and `unknown` for inputs unlike the training data.

A fine-tuned classifier's softmax is often over-confident, and it calls
anything one of its classes. With validation data, `fit_recipe` ends by
fitting a temperature `T` on the validation logits (`calibrate`: the `T`
that minimises their negative log-likelihood, a 1-D search over `log T` in
NumPy, the same on every backend). `T` goes into the model's metadata
(`transfer_metadata["calibration"]`), the run's manifest and every export;
`transfer predict`, `transfer serve` and `transfer.prediction` divide the
logits by `T` before the softmax. The ranking of the classes does not
change, only how sure the probabilities say the model is. The expected
calibration error (ECE: 15 equal-width bins of the top probability, the
gap between accuracy and mean confidence, weighted by the bin's share)
before and after is in the manifest, and `report/reliability_diagram.png`
shows both.

`reject_below=P` (`transfer predict --reject-below P`) labels an input
`unknown` when its calibrated top probability is under `P`, or when its
out-of-distribution score is above the threshold recorded at fit time: the
score that `OOD_RATE` (5%) of the validation examples exceed. The score is
the energy `-T * logsumexp(logits / T)` by default (`OOD_SCORE`, chosen by
the measurement in `benchmarks/README.md`); `max_logit` (minus the largest
logit) is the other. Higher means less like the training data.
`choose_reject_threshold` picks `P` on labelled data for a target rate of
`unknown`.

Models whose output layer is a softmax are calibrated through their
log-probabilities; they get no out-of-distribution score (it needs logits),
only the probability rule.
"""

import logging
import math
import os

import numpy as np

from transfer import _backend
from transfer import _inputs
from transfer import _model_info
from transfer.reporting import plots

logger = logging.getLogger(__name__)

ECE_BINS = 15
OOD_SCORES = ("energy", "max_logit")
OOD_SCORE = "energy"
OOD_RATE = 0.05
UNKNOWN = "unknown"
# The temperatures searched; NLL is unimodal in log T.
_T_LIMITS = (0.05, 20.0)
_LOG_T_RANGE = (math.log(_T_LIMITS[0]), math.log(_T_LIMITS[1]))
_EPSILON = 1e-12


def softmax(logits, temperature=1.0):
    """Softmax of `logits / temperature` over the last axis, as float64.

    Example:

    >>> softmax([[0.0, math.log(3.0)]]).round(3).tolist()
    [[0.25, 0.75]]
    >>> softmax([[0.0, math.log(3.0)]], temperature=2.0).round(3).tolist()
    [[0.366, 0.634]]
    """
    z = np.asarray(logits, dtype="float64") / float(temperature)
    z = np.exp(z - z.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def _logsumexp(z):
    top = z.max(-1, keepdims=True)
    return (top + np.log(np.exp(z - top).sum(-1, keepdims=True)))[..., 0]


def temperature(model):
    """The temperature recorded in `model`'s metadata, else `1.0`."""
    return _model_info.temperature(model)


def model_logits(model, outputs):
    """`outputs` of `model` as logits: as they are, or the log of a softmax
    head's probabilities (equal to its logits up to a constant per row)."""
    outputs = np.asarray(outputs, dtype="float64")
    if _model_info.is_logits(model):
        return outputs
    return np.log(np.clip(outputs, _EPSILON, None))


def calibrated_probabilities(model, outputs):
    """Class probabilities of `model`'s `outputs`, with its temperature.

    Logits go through `softmax(logits / T)`; a softmax head's outputs pass
    unchanged when `T` is 1 (no calibration recorded).

    Example:

    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    >>> model.transfer_metadata = {"calibration": {"temperature": 2.0}}
    >>> calibrated_probabilities(model, [[0.0, math.log(3.0)]]).round(3)
    array([[0.366, 0.634]])
    """
    t = temperature(model)
    if not _model_info.is_logits(model) and t == 1.0:
        return np.asarray(outputs, dtype="float64")
    return softmax(model_logits(model, outputs), t)


def negative_log_likelihood(logits, labels, temperature=1.0):
    """Mean cross-entropy of `softmax(logits / temperature)` on `labels`."""
    z = np.asarray(logits, dtype="float64") / float(temperature)
    labels = np.asarray(labels, dtype="int64")
    picked = z[np.arange(len(labels)), labels]
    return float(np.mean(_logsumexp(z) - picked))


def fit_temperature(logits, labels):
    """The temperature that minimises the NLL of `labels` (from 0.05 to 20).

    A golden-section search over `log T`: the NLL is convex in `1 / T`, so
    it has one minimum in `log T`; 60 steps pin it far below 0.001.

    Example:

    >>> rng = np.random.default_rng(0)
    >>> labels = rng.integers(0, 3, 2000)
    >>> # Over-confident logits: the right class is only 60% likely
    >>> # although the logits say more, so the fitted T is above 1.
    >>> logits = rng.normal(size=(2000, 3)) * 4
    >>> right = rng.random(2000) < 0.6
    >>> logits[right, labels[right]] += 6
    >>> fit_temperature(logits, labels) > 1.0
    True
    """
    low, high = _LOG_T_RANGE
    ratio = (math.sqrt(5.0) - 1.0) / 2.0

    def loss(u):
        return negative_log_likelihood(logits, labels, math.exp(u))

    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = loss(a), loss(b)
    for _ in range(60):
        if fa <= fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = loss(a)
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = loss(b)
    return float(math.exp((low + high) / 2.0))


def reliability_bins(probabilities, labels, bins=ECE_BINS):
    """Per equal-width bin of the top probability: `(confidence, accuracy,
    count)` arrays (NaN for an empty bin's confidence and accuracy)."""
    probabilities = np.asarray(probabilities, dtype="float64")
    confidence = probabilities.max(-1)
    correct = probabilities.argmax(-1) == np.asarray(labels)
    # Bin i holds (i / bins, (i + 1) / bins]; a confidence of 0 goes in 0.
    index = np.clip(np.ceil(confidence * bins).astype("int64") - 1, 0,
                    bins - 1)
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, confidence, bins) / count
        accuracy = np.bincount(index, correct.astype("float64"), bins) / count
    return mean_confidence, accuracy, count


def expected_calibration_error(probabilities, labels, bins=ECE_BINS):
    """The ECE: `sum |accuracy - confidence| * share` over `bins` equal-width
    bins of the top probability.

    Example:

    >>> # Says 0.9 and is right 3 times in 4: ECE 0.15.
    >>> probs = [[0.9, 0.1]] * 4
    >>> round(expected_calibration_error(probs, [0, 0, 0, 1]), 6)
    0.15
    """
    confidence, accuracy, count = reliability_bins(probabilities, labels,
                                                   bins)
    used = count > 0
    gaps = np.abs(accuracy[used] - confidence[used]) * count[used]
    return float(gaps.sum() / max(1, count.sum()))


def ood_scores(logits, score=OOD_SCORE, temperature=1.0):
    """Out-of-distribution scores of logits: higher is less like training.

    `"energy"`: `-T * logsumexp(logits / T)`; `"max_logit"`: minus the
    largest logit.

    Example:

    >>> ood_scores([[2.0, 0.0], [0.5, 0.4]], "max_logit").tolist()
    [-2.0, -0.5]
    """
    z = np.asarray(logits, dtype="float64")
    if score == "energy":
        return -float(temperature) * _logsumexp(z / float(temperature))
    if score == "max_logit":
        return -z.max(-1)
    raise ValueError(
        f"Unknown out-of-distribution score {score!r}; use one of "
        f"{list(OOD_SCORES)}. Received: score={score!r}"
    )


def collect_logits(model, data, batch_size=32):
    """`(logits, labels)` of `model` on labelled `data`, as NumPy arrays.

    One pass, batch by batch (`data` as `transfer._inputs.iterate_batches`
    takes it); one-hot labels become class indices.
    """
    logits, labels = [], []
    for x, y in _inputs.iterate_batches(data, batch_size):
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[-1] > 1:
            y = y.argmax(-1)
        outputs = _backend.predict_on_batch(model, x)
        logits.append(model_logits(model, outputs))
        labels.append(y.reshape(-1).astype("int64"))
    if not logits:
        raise ValueError("The calibration data is empty. Received: 0 examples")
    return np.concatenate(logits), np.concatenate(labels)


def not_fitted(reason):
    """The `calibration` record of a model with no temperature fitted."""
    return {"method": "temperature", "fitted": False, "temperature": 1.0,
            "reason": reason}


def calibrate(model, data, *, batch_size=32, diagram_path=None):
    """Fits a temperature on labelled `data`; returns the record to keep.

    `fit_recipe` calls it on the validation data at the end of a run and
    stores the result as `transfer_metadata["calibration"]`; set it so
    yourself to calibrate a model trained another way.

    Args:
        model: a classifier (logits or softmax outputs).
        data: labelled data the model did not train on, as `fit` takes it.
        batch_size: batch size for array data. Defaults to `32`.
        diagram_path: where to write the reliability diagram PNG (before
            and after), or `None` for none. Defaults to `None`.

    When the validation NLL has no minimum between T = 0.05 and 20 (every
    example right, say, where it falls forever as T shrinks), `T = 1` is
    kept, `fitted` is `False` and `reason` says why.

    Returns:
        A dict: `method`, `fitted`, `temperature`, `num_examples`,
        `ece_bins`, `ece_before`, `ece_after`, `nll_before`, `nll_after`,
        and for logit models `ood_score`, `ood_threshold` (the score that
        `ood_rate` of `data` exceeds) and `ood_rate`.

    Example:

    >>> # Logits 4 * x, labels that follow x only loosely: over-confident.
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    >>> model.layers[-1].set_weights([4 * np.eye(2), np.zeros(2)])
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(200, 2)).astype("float32")
    >>> y = (x[:, 1] - x[:, 0] + rng.normal(size=200) > 0).astype("int64")
    >>> record = transfer.calibration.calibrate(model, (x, y))
    >>> record["fitted"], record["num_examples"], record["temperature"] > 1
    (True, 200, True)
    >>> record["ece_after"] < record["ece_before"], record["ood_score"]
    (True, 'energy')
    >>> # The fitted T has the lowest NLL of all (T = 1 included).
    >>> record["nll_after"] <= record["nll_before"] + 1e-6
    True
    >>> model.transfer_metadata = {"calibration": record}  # used from now on
    """
    logits, labels = collect_logits(model, data, batch_size)
    t = fit_temperature(logits, labels)
    reason = None
    if not _T_LIMITS[0] * 1.01 < t < _T_LIMITS[1] / 1.01:
        # No minimum inside the range: e.g. every example right, where the
        # NLL falls forever as T -> 0. Such a T would only mislead.
        reason = (f"the validation NLL has no minimum between T = "
                  f"{_T_LIMITS[0]} and {_T_LIMITS[1]} (found {t:.3g}; "
                  f"{len(labels)} examples, accuracy "
                  f"{(logits.argmax(-1) == labels).mean():.3f}): T = 1 kept")
        logger.warning("Calibration: %s.", reason)
        t = 1.0
    before, after = softmax(logits), softmax(logits, t)
    record = {
        "method": "temperature",
        "fitted": reason is None,
        "temperature": round(t, 6),
        "num_examples": int(len(labels)),
        "ece_bins": ECE_BINS,
        "ece_before": round(expected_calibration_error(before, labels), 6),
        "ece_after": round(expected_calibration_error(after, labels), 6),
        "nll_before": round(negative_log_likelihood(logits, labels), 6),
        "nll_after": round(negative_log_likelihood(logits, labels, t), 6),
    }
    if reason is not None:
        record["reason"] = reason
    if _model_info.is_logits(model):
        scores = ood_scores(logits, OOD_SCORE, t)
        record.update(
            ood_score=OOD_SCORE,
            ood_threshold=round(float(np.quantile(scores, 1.0 - OOD_RATE)),
                                6),
            ood_rate=OOD_RATE,
        )
    if diagram_path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(diagram_path)),
                    exist_ok=True)
        figure = plots.reliability_diagram_figure(
            [reliability_bins(before, labels), reliability_bins(after, labels)],
            [f"before (ECE {record['ece_before']:.3f})",
             f"after, T = {t:.2f} (ECE {record['ece_after']:.3f})"],
        )
        figure.savefig(diagram_path)
    logger.info(
        "Calibration on %d examples: temperature %.3f; ECE (%d bins) %.4f "
        "before, %.4f after.", len(labels), t, ECE_BINS,
        record["ece_before"], record["ece_after"])
    return record


def check_reject_below(reject_below):
    """Checks a rejection threshold: `None`, or a probability in `(0, 1)`.

    Raises:
        ValueError: any other value.
    """
    if reject_below is None:
        return
    good = isinstance(reject_below, (int, float)) and not isinstance(
        reject_below, bool) and 0.0 < reject_below < 1.0
    if not good:
        raise ValueError(
            "`reject_below` is a probability strictly between 0 and 1 (e.g. "
            "0.5): inputs whose calibrated top probability is under it are "
            f"labelled '{UNKNOWN}'. Received: reject_below={reject_below!r}"
        )


def _ood_flags(model, logits):
    """`(flags, scores)` of the OOD rule recorded for `model`, or
    `(None, None)` when it records none."""
    record = _model_info.metadata(model).get("calibration") or {}
    threshold, score = record.get("ood_threshold"), record.get("ood_score")
    if threshold is None or score not in OOD_SCORES or not (
        _model_info.is_logits(model)
    ):
        return None, None
    scores = ood_scores(logits, score, temperature(model))
    return scores > float(threshold), scores


def unknown_reasons(model, outputs, reject_below):
    """Why each row of `outputs` is `unknown`, or `None` where it is not.

    Returns:
        `(probabilities, reasons, scores)`: the calibrated probabilities;
        per row `"out_of_distribution"`, `"low_confidence"` or `None`; the
        OOD scores (`None` when the model records no OOD threshold).
    """
    check_reject_below(reject_below)
    logits = model_logits(model, outputs)
    probabilities = calibrated_probabilities(model, outputs)
    flags, scores = _ood_flags(model, logits)
    reasons = []
    for i, row in enumerate(probabilities):
        if flags is not None and flags[i]:
            reasons.append("out_of_distribution")
        elif reject_below is not None and row.max() < reject_below:
            reasons.append("low_confidence")
        else:
            reasons.append(None)
    return probabilities, reasons, scores


def choose_reject_threshold(model, data, rate=0.1, *, batch_size=32):
    """The `reject_below` that labels `rate` of `data` `unknown`.

    Counts both rules of `reject_below`: the examples the recorded
    out-of-distribution threshold flags (about `OOD_RATE` of the
    validation data) first, then the least confident of the others, until
    `rate` of `data` is `unknown`. Pass held-out data of the training
    classes (the validation split): the rate on new data of those classes
    is then about `rate`, and inputs unlike them are `unknown` far more
    often (`benchmarks/calibration.py` measures both).

    Args:
        model: a classifier, calibrated or not (its temperature is used).
        data: labelled data, as `fit` takes it (the labels are not used).
        rate: the share of `data` to label `unknown`, in `(0, 1)`.
            Defaults to `0.1`.
        batch_size: batch size for array data. Defaults to `32`.

    Returns:
        A float in `(0, 1)`: pass it as `reject_below`.

    Raises:
        ValueError: `rate` not in `(0, 1)`, or the out-of-distribution rule
            alone labels at least `rate` of `data` unknown.

    Example:

    >>> model = transfer.build_classifier(
    ...     "small_cnn", 2, weights=None, image_size=32)
    >>> x, y = transfer.synthetic_images(20, 32, 2)
    >>> p = transfer.choose_reject_threshold(model, (x, y), rate=0.25)
    >>> _, reasons, _ = transfer.calibration.unknown_reasons(
    ...     model, model.predict(x, verbose=0), reject_below=p)
    >>> 0.0 < p < 1.0, reasons.count("low_confidence")
    (True, 5)
    """
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not (
        0.0 < rate < 1.0
    ):
        raise ValueError(
            "`rate` is the share of the data to label unknown, strictly "
            f"between 0 and 1 (e.g. 0.05). Received: rate={rate!r}"
        )
    logits, _ = collect_logits(model, data, batch_size)
    confidence = softmax(logits, temperature(model)).max(-1)
    flags, _ = _ood_flags(model, logits)
    if flags is None:
        flags = np.zeros(len(logits), dtype=bool)
    wanted = int(round(rate * len(logits))) - int(flags.sum())
    if wanted <= 0:
        raise ValueError(
            f"The out-of-distribution rule alone labels {flags.mean():.1%} "
            f"of the data unknown, already at or above rate={rate}; pass a "
            "higher rate (or more data). Received: "
            f"rate={rate!r}, {len(logits)} examples"
        )
    kept = np.sort(confidence[~flags])
    # Halfway between the last one rejected and the first one kept.
    upper = kept[wanted] if wanted < len(kept) else 1.0
    threshold = (kept[wanted - 1] + upper) / 2.0
    return float(np.clip(threshold, 1e-6, 1.0 - 1e-6))
