"""Calibration and `unknown`: ECE before and after temperature scaling, and
how well out-of-distribution scores tell unlike inputs apart.

For a finished image run: the temperature it recorded (fitted on its
validation split at the end of `fit_recipe`; fitted here on that split for
runs without one), the expected calibration error (15 equal-width bins)
and NLL before and after on the test folder; the AUROC of each
out-of-distribution score (energy at the run's temperature and at 1,
max-logit, and max-softmax for reference) with the test folder as
in-distribution and scikit-learn's digits (8x8, grey levels 0-16 scaled to
0-255, upscaled bilinearly to the model's size, grey repeated into RGB) as
out-of-distribution; and the rate of `unknown` on each, at thresholds
chosen on the validation split: each score's 95th validation percentile,
and the `reject_below` of `transfer.choose_reject_threshold(rate=0.1)`
with the run's own rule. JSON on stdout (and `--output`), with the date,
the backend and the load average before and after.

    python benchmarks/calibration.py --run runs/fashion \\
        --test /work/scale_data/test-10000 --output calibration.json
    python benchmarks/calibration.py --smoke   # a tiny CNN on synthetic
                                               # images: checks the script
"""

import argparse
import json
import os
import time

import numpy as np

_SCORES = ("energy", "energy_t1", "max_logit", "max_softmax")


def _digits(size):
    """scikit-learn's digits as `(n, size, size, 3)` float32 in [0, 255]."""
    from PIL import Image
    from sklearn.datasets import load_digits

    images = load_digits().images * (255.0 / 16.0)
    out = np.empty((len(images), size, size, 3), "float32")
    for i, image in enumerate(images):
        grey = Image.fromarray(image.astype("uint8")).resize(
            (size, size), Image.BILINEAR)
        out[i] = np.asarray(grey, "float32")[..., None]
    return out


def _logits(model, x, batch_size=64):
    from transfer import calibration

    return calibration.collect_logits(
        model, (x, np.zeros(len(x), "int64")), batch_size)[0]


def _scores(name, logits, temperature):
    from transfer import calibration

    if name == "energy":
        return calibration.ood_scores(logits, "energy", temperature)
    if name == "energy_t1":
        return calibration.ood_scores(logits, "energy", 1.0)
    if name == "max_logit":
        return calibration.ood_scores(logits, "max_logit")
    return -calibration.softmax(logits, temperature).max(-1)


def _smoke():
    """A tiny CNN trained by `fit_recipe` (which calibrates it) on
    synthetic images, with synthetic validation and test images."""
    import tempfile

    import transfer

    x, y = transfer.synthetic_images(96, 32, 3, seed=0)
    model = transfer.build_classifier("small_cnn", 3, weights=None,
                                      image_size=32)
    validation, test = (x[64:80], y[64:80]), (x[80:], y[80:])
    with tempfile.TemporaryDirectory() as scratch:
        transfer.fit_recipe(
            model, [transfer.Stage("all", 3, 1e-2, "all")], (x[:64], y[:64]),
            validation_data=validation, run_dir=os.path.join(scratch, "run"),
            batch_size=16, verbose=0)
    return model, validation, test


def _run(run_dir, test_dir):
    from transfer import calibration
    from transfer import evaluation_data
    from transfer import workflow

    model, config = workflow.load_run(run_dir)
    validation = evaluation_data.load_labelled_data(
        config["data"], model, config, validation_only=True, run_dir=run_dir)
    test = evaluation_data.labelled_dataset(test_dir, model, config)
    if not (model.transfer_metadata.get("calibration") or {}).get("fitted"):
        model.transfer_metadata = dict(
            model.transfer_metadata,
            calibration=calibration.calibrate(model, validation))
    return model, validation, test


def _auroc(inside, outside):
    from sklearn.metrics import roc_auc_score

    labels = np.r_[np.zeros(len(inside)), np.ones(len(outside))]
    return float(roc_auc_score(labels, np.r_[inside, outside]))


def _rule_rates(model, reject_below, logits_by_name):
    """Share labelled unknown, per data set and reason, by the library's
    own rule (`unknown_reasons`) at `reject_below`."""
    from transfer import calibration

    rates = {}
    for name, logits in logits_by_name.items():
        _, reasons, _ = calibration.unknown_reasons(model, logits,
                                                    reject_below)
        n = len(reasons)
        rates[name] = {
            "unknown": round(sum(r is not None for r in reasons) / n, 4),
            "out_of_distribution": round(
                reasons.count("out_of_distribution") / n, 4),
            "low_confidence": round(reasons.count("low_confidence") / n, 4),
        }
    return rates


def measure(model, validation, test):
    from transfer import _model_info
    from transfer import calibration

    record = model.transfer_metadata["calibration"]
    t = record["temperature"]
    val_logits, _ = calibration.collect_logits(model, validation, 64)
    test_logits, test_labels = calibration.collect_logits(model, test, 64)
    size = int(model.input_shape[1])
    digit_logits = _logits(model, _digits(size))
    if not _model_info.is_logits(model):
        raise ValueError("This benchmark needs a model that outputs logits.")
    before = calibration.softmax(test_logits)
    after = calibration.softmax(test_logits, t)
    result = {
        "temperature": t,
        "fit_time_record": record,
        "num_validation": len(val_logits),
        "num_test": len(test_labels),
        "num_ood_digits": len(digit_logits),
        "test_accuracy": round(float(
            (before.argmax(-1) == test_labels).mean()), 4),
        "ece_bins": calibration.ECE_BINS,
        "test_ece_before": round(calibration.expected_calibration_error(
            before, test_labels), 4),
        "test_ece_after": round(calibration.expected_calibration_error(
            after, test_labels), 4),
        "test_nll_before": round(calibration.negative_log_likelihood(
            test_logits, test_labels), 4),
        "test_nll_after": round(calibration.negative_log_likelihood(
            test_logits, test_labels, t), 4),
        "ood": {},
    }
    for name in _SCORES:
        inside = _scores(name, test_logits, t)
        outside = _scores(name, digit_logits, t)
        threshold = float(np.quantile(_scores(name, val_logits, t), 0.95))
        result["ood"][name] = {
            "auroc": round(_auroc(inside, outside), 4),
            "threshold_95th_validation": round(threshold, 4),
            "unknown_rate_test": round(float((inside > threshold).mean()), 4),
            "unknown_rate_digits": round(
                float((outside > threshold).mean()), 4),
        }
    reject_below = calibration.choose_reject_threshold(
        model, validation, rate=0.1)
    result["rule"] = {
        "reject_below": round(reject_below, 4),
        "chosen_for_validation_rate": 0.1,
        "ood_score": record.get("ood_score"),
        "rates": _rule_rates(model, reject_below, {
            "validation": val_logits, "test": test_logits,
            "digits": digit_logits}),
    }
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a finished `transfer train` image run")
    parser.add_argument("--test", help="labelled test folder (the run's "
                        "classes)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny CNN and synthetic images")
    parser.add_argument("--output", help="also write the JSON here")
    args = parser.parse_args()
    if not args.smoke and not (args.run and args.test):
        parser.error("pass --run RUN_DIR --test DIR, or --smoke")
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    load_before = [round(v, 2) for v in os.getloadavg()]
    import keras

    if args.smoke:
        model, validation, test = _smoke()
    else:
        model, validation, test = _run(args.run, args.test)
    result = {
        "benchmark": "calibration", "date": started,
        "backend": keras.config.backend(), "run": args.run,
        "test": args.test, "smoke": args.smoke,
        "load_average_before": load_before,
        **measure(model, validation, test),
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
