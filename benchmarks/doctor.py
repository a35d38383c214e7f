"""The data doctor on Fashion-MNIST: label errors, leakage, duplicates, time.

1. Label errors: the 1,000-image training folder with 5% of its labels
   flipped at random (seeded; a flipped file is linked into another class
   folder). Precision and recall of the doctor's ranking at top-k = the
   number flipped (lowest label quality first), and of the files cleanlab
   flags; then test accuracy on the 10,000 test images of a logistic
   regression (the doctor's: standardized, L2-normalized EfficientNet-Lite0
   embeddings, C=0.1) trained on the noisy labels, on the noisy set without
   the flagged files, and on the true labels (reference).
2. Leakage and duplicates: a split root, `train/` = the 1,000 training
   images plus 50 exact copies and 50 near-duplicates (a third each
   resized to 56 px, re-encoded at JPEG quality 75, cropped by 1 px) of
   test images, `test/` = 1,000 test
   images (those 100 among them). Recall of each kind (the planted file is
   flagged as leakage with its test image as partner) and the files
   flagged as leakage on the same folders without the planted copies
   (false positives; Fashion-MNIST holds a few true near-duplicates, so
   some may be real).
3. Seconds: the doctor on the 1,000- and 10,000-image folders, embeddings
   computed (empty cache) and cached.

    python benchmarks/doctor.py --output doctor.json
    python benchmarks/doctor.py --smoke   # 100 training and 100 test images

One JSON object on stdout (and in `--output`), with the date, backend and
load average before and after.
"""

import argparse
import json
import os
import random
import shutil
import tempfile
import time

import numpy as np

TRAIN = "/work/scale_data/train-1000"
TEST = "/work/scale_data/test-10000"


def _load():
    with open("/proc/loadavg") as f:
        return f.read().split()[:3]


def _files(root, limit=None, seed=0):
    """`[(class, name)]` of a class-folder root (a seeded sample)."""
    classes = [c for c in sorted(os.listdir(root))
               if not c.startswith(".") and os.path.isdir(
                   os.path.join(root, c))]
    found = sorted((c, n) for c in classes
                   for n in sorted(os.listdir(os.path.join(root, c)))
                   if not n.startswith("."))
    if limit is not None and limit < len(found):
        found = sorted(random.Random(seed).sample(found, limit))
    return found


def _link(source_root, files, target_root, classes=None):
    """Symlinks `files` into `target_root/<class>/`; with `classes`, into
    those classes' folders, named by their index (`00042.jpg`)."""
    for i, (label, name) in enumerate(files):
        if classes is not None:
            label, name = classes[i], f"{i:05d}{os.path.splitext(name)[1]}"
        os.makedirs(os.path.join(target_root, label), exist_ok=True)
        os.symlink(os.path.abspath(os.path.join(source_root, *files[i])),
                   os.path.join(target_root, label, name))


def _doctor(data, work, name, **kwargs):
    import transfer

    started = time.perf_counter()
    diagnosis = transfer.inspect_data(
        data, "efficientnet_lite0", output_dir=os.path.join(work, name),
        verbose=0, **kwargs)
    return diagnosis, round(time.perf_counter() - started, 2)


def _accuracy(train_x, train_y, test_x, test_y):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from transfer.doctor.duplicates import normalized
    from transfer.doctor.label_issues import single_threaded

    model = make_pipeline(StandardScaler(),
                          LogisticRegression(max_iter=1000, C=0.1))
    with single_threaded():
        model.fit(normalized(train_x), train_y)
        return round(float(model.score(normalized(test_x), test_y)), 4)


def label_errors(args, work, cache):
    train = _files(args.train, args.train_images, args.seed)
    classes = sorted({label for label, _ in train})
    rng = random.Random(args.seed)
    flipped = set(rng.sample(range(len(train)),
                             round(args.flip_fraction * len(train))))
    noisy = [rng.choice([c for c in classes if c != label])
             if i in flipped else label
             for i, (label, _) in enumerate(train)]
    root = os.path.join(work, "noisy")
    _link(args.train, train, root, noisy)
    diagnosis, seconds = _doctor(root, work, "doctor-noisy", cache_dir=cache)
    cached, seconds_cached = _doctor(root, work, "doctor-noisy-again",
                                     cache_dir=cache)
    names = list(diagnosis.files.names)
    truth = {f"{noisy[i]}/{i:05d}{os.path.splitext(train[i][1])[1]}"
             for i in flipped}
    ranked = [names[i] for i in np.argsort(diagnosis.label_quality)]
    top = set(ranked[:len(truth)])
    flagged = {row["file"] for row in diagnosis.rows
               if row["issue"] == "label_error"}
    test_diagnosis, test_seconds = _doctor(args.test, work, "doctor-test",
                                           cache_dir=cache)
    _, test_seconds_cached = _doctor(args.test, work, "doctor-test-again",
                                     cache_dir=cache)
    x = diagnosis.embeddings
    y = np.asarray(diagnosis.files.labels)
    true_y = np.array([
        classes.index(train[int(os.path.splitext(name.split("/")[1])[0])][0])
        for name in names])
    keep = np.array([name not in flagged for name in names])
    test_x = test_diagnosis.embeddings
    test_y = np.asarray(test_diagnosis.files.labels)
    assert list(test_diagnosis.files.class_names) == classes
    return {
        "train_images": len(train), "flipped": len(truth),
        "top_k": {"k": len(truth),
                  "precision": round(len(top & truth) / len(top), 4),
                  "recall": round(len(top & truth) / len(truth), 4)},
        "cleanlab_flagged": {
            "files": len(flagged),
            "precision": round(len(flagged & truth) / max(1, len(flagged)),
                               4),
            "recall": round(len(flagged & truth) / len(truth), 4)},
        "test_images": len(test_y),
        "test_accuracy": {
            "noisy_labels": _accuracy(x, y, test_x, test_y),
            "flagged_dropped": _accuracy(x[keep], y[keep], test_x, test_y),
            "true_labels": _accuracy(x, true_y, test_x, test_y),
        },
        "seconds": {
            "train_folder_embedding": seconds,
            "train_folder_cached": seconds_cached,
            "test_folder_embedding": test_seconds,
            "test_folder_cached": test_seconds_cached,
            "cached_embeddings_second_run": cached.summary[
                "cached_embeddings"],
        },
    }


NEAR_KINDS = ("resized", "reencoded", "cropped")


def _near_copy(source, target, kind):
    """A resized (to 56 px, JPEG quality 90), re-encoded (JPEG quality 75)
    or cropped (1 px off the top and left, resized back, JPEG quality 90)
    copy."""
    from PIL import Image

    with Image.open(source) as image:
        image = image.convert("RGB")
        width, height = image.size
        quality = 90
        if kind == "resized":
            image = image.resize((2 * width, 2 * height),
                                 Image.Resampling.BICUBIC)
        elif kind == "reencoded":
            quality = 75
        else:
            image = image.crop((1, 1, width, height)).resize(
                (width, height), Image.Resampling.BICUBIC)
        image.save(target, format="JPEG", quality=quality)


def leakage(args, work, cache):
    train = _files(args.train, args.train_images, args.seed)
    test = _files(args.test, args.test_images, args.seed + 1)
    rng = random.Random(args.seed + 2)
    planted = rng.sample(test, 2 * args.planted)
    clean = os.path.join(work, "clean")
    _link(args.train, train, os.path.join(clean, "train"))
    _link(args.test, test, os.path.join(clean, "test"))
    leaky = os.path.join(work, "leaky")
    shutil.copytree(clean, leaky, symlinks=True)
    copies = {}
    for i, (label, name) in enumerate(planted):
        kind = "exact" if i < args.planted else NEAR_KINDS[
            i % len(NEAR_KINDS)]
        source = os.path.join(args.test, label, name)
        target = os.path.join(leaky, "train", label,
                              f"planted_{kind}_{i}.jpg")
        if kind == "exact":
            shutil.copyfile(source, target)
        else:
            _near_copy(source, target, kind)
        copies[f"train/{label}/planted_{kind}_{i}.jpg"] = (
            kind, f"test/{label}/{name}")
    found, _ = _doctor(leaky, work, "doctor-leaky", cache_dir=cache)
    leaks = {row["file"]: row["other_files"].split(" | ")
             for row in found.rows if row["issue"] == "leakage"}
    recall, hits_of = {}, {}
    for kind in ("exact", *NEAR_KINDS):
        mine = [(f, source) for f, (k, source) in copies.items() if k == kind]
        hits_of[kind] = (sum(source in leaks.get(f, []) for f, source in mine),
                         len(mine))
        recall[kind] = round(hits_of[kind][0] / max(1, len(mine)), 4)
    near = [hits_of[kind] for kind in NEAR_KINDS]
    recall["near"] = round(sum(h for h, _ in near) / sum(n for _, n in near),
                           4)
    base, _ = _doctor(clean, work, "doctor-clean", cache_dir=cache)
    base_leaks = [row for row in base.rows if row["issue"] == "leakage"]
    sources = {source for _, source in copies.values()}
    return {
        "train_images": len(train), "test_images": len(test),
        "planted": {"exact": args.planted, "near": args.planted},
        "recall": recall,
        "leakage_files_flagged": len(leaks),
        "leakage_files_not_planted": sum(
            1 for f in leaks if f not in copies and f not in sources),
        "clean_folder": {
            "leakage_files": len(base_leaks),
            "leaking_pairs": base.summary["pairs"]["leaking"],
            "near_duplicate_files": base.summary["issues"]["near_duplicate"],
            "exact_duplicate_files": base.summary["issues"][
                "exact_duplicate"],
        },
        "similarity": found.summary["settings"]["similarity"],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", default=TRAIN)
    parser.add_argument("--test", default=TEST)
    parser.add_argument("--train-images", type=int, default=None)
    parser.add_argument("--test-images", type=int, default=1000,
                        help="test images in the leakage folders")
    parser.add_argument("--flip-fraction", type=float, default=0.05)
    parser.add_argument("--planted", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true",
                        help="100 training and 100 test images, 5 planted")
    parser.add_argument("--output", help="also write the JSON here")
    args = parser.parse_args()
    if args.smoke:
        args.train_images, args.test_images, args.planted = 100, 100, 5
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "loadavg_before": _load(), "smoke": args.smoke}
    import keras

    result["backend"] = keras.config.backend()
    work = tempfile.mkdtemp(prefix="doctor-bench-")
    cache = os.path.join(work, "cache")
    try:
        if args.smoke:
            small_test = os.path.join(work, "test-small")
            _link(args.test, _files(args.test, args.test_images,
                                    args.seed + 1), small_test)
            args.test = small_test
        result["label_errors"] = label_errors(args, work, cache)
        result["leakage"] = leakage(args, work, cache)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["loadavg_after"] = _load()
    text = json.dumps(result)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
