"""`inspect_data`: the data doctor on one folder, start to finish."""

import dataclasses
import logging
import os
import time

import numpy as np

from transfer._io import probe_nearest
from transfer._io import write_json
from transfer.doctor import duplicates
from transfer.doctor import embeddings as embeddings_lib
from transfer.doctor import files as files_lib
from transfer.doctor import fix_split as fix_split_lib
from transfer.doctor import label_issues
from transfer.doctor import outputs
from transfer.doctor.report_page import write_report_page

logger = logging.getLogger(__name__)

# cleanlab's outlier scores compare each image with its 10 neighbours.
_MIN_FOR_OUTLIERS = 12


@dataclasses.dataclass
class Diagnosis:
    """What `inspect_data` found.

    Attributes:
        summary: the JSON summary (counts, outputs, settings, seconds), as
            `transfer doctor` prints it.
        rows: the issue rows, as `issues.csv` holds them.
        files: the `ImageFiles` looked at.
        embeddings: `(n, d)` float32, zero rows for unreadable files.
        label_quality: each file's label quality score (cleanlab; lower is
            worse), `nan` for unreadable files.
        parts: each file's part (`"train"`, `"val"`, `"test"`, `None`).
    """

    summary: dict
    rows: list
    files: files_lib.ImageFiles
    embeddings: np.ndarray
    label_quality: np.ndarray
    parts: list


def _cache_directory(cache_dir):
    if cache_dir == "auto":
        return embeddings_lib.default_cache_dir()
    return cache_dir


def inspect_data(data, backbone="efficientnet_lite0", *, output_dir="doctor",
                 similarity=duplicates.DEFAULT_SIMILARITY, fix_split=False,
                 validation_split=0.2, seed=1337, cache_dir="auto",
                 allow_random_weights=False, verbose=1):
    """Finds duplicates, leakage, likely label errors and outliers.

    Use it before training on a small labelled folder, where a handful of
    wrong labels or test images copied into training decide the result.
    Every image is embedded once with a pretrained backbone (cached on
    disk by file content, so a second run is fast); then exact duplicates
    (same bytes), near-duplicates (embeddings with a cosine similarity of
    at least `similarity`, or neighbours with the same pixels at another
    size or compression), leakage (duplicates in two parts: a split
    root's `train/`, `val/`, `test/`, or the split `transfer train` would
    make of a class-folder root), likely label errors (cleanlab's
    confident learning on out-of-fold probabilities of a logistic
    regression on the embeddings), outliers and class imbalance are found.
    Unreadable images are skipped and listed.

    Writes into `output_dir`: `report.html` (image grids with file paths,
    given and suggested labels, scores), `issues.csv` (one row per file and
    issue), `summary.json`, `projector/` (the embeddings with thumbnails
    and labels for TensorBoard's Projector:
    `tensorboard --logdir doctor/projector`) and, with `fix_split`,
    `split.json`, a split without leakage that `transfer train
    --split-file` (config key `split_file`) trains on.

    Args:
        data: a class-folder root or a split root (`train/`, `val/`,
            `test/`).
        backbone: a registered backbone with pretrained weights, or a
            finished run's directory (its trained model's features).
            Defaults to `"efficientnet_lite0"` (ImageNet weights, offline).
        output_dir: where the files go. Defaults to `"doctor"`.
        similarity: cosine similarity of embeddings at or above which
            two images are near-duplicates (neighbours whose thumbnails
            correlate at 0.998 or more are too:
            `transfer.doctor.duplicates`). Defaults to `0.95`.
        fix_split: write `split.json`. Defaults to `False`.
        validation_split: the fraction `transfer train` holds out of a
            class-folder root (leakage is checked across that split).
            Defaults to `0.2`.
        seed: that split's seed (and the folds'). Defaults to `1337`.
        cache_dir: the embeddings' disk cache: `"auto"` for
            `~/.cache/keras-transfer/doctor` (`TRANSFER_CACHE_DIR` moves it),
            a folder, or `None` for none. Defaults to `"auto"`.
        allow_random_weights: let a backbone without pretrained weights
            through (tests only: its embeddings mean nothing).
            Defaults to `False`.
        verbose: `1` shows a progress bar while embedding. Defaults to `1`.

    Returns:
        A `Diagnosis`; `diagnosis.summary` is what `summary.json` holds.

    Raises:
        ValueError: a backbone without pretrained weights, one class, a
            class with fewer than 5 images, or a bad `similarity`,
            before any image is embedded.
        ImportError: cleanlab is missing (`pip install
            "keras-transfer[doctor]"`).

    Example:

    >>> import os
    >>> x, y = transfer.synthetic_images(24, 32, 2)
    >>> for i, (image, label) in enumerate(zip(x, y)):
    ...     folder = os.path.join("pets", ["cat", "dog"][label])
    ...     os.makedirs(folder, exist_ok=True)
    ...     keras.utils.save_img(os.path.join(folder, f"{i}.png"), image)
    >>> diagnosis = transfer.inspect_data(
    ...     "pets", "small_cnn", allow_random_weights=True, cache_dir=None,
    ...     verbose=0)  # small_cnn is random: for the example only
    >>> diagnosis.summary["files"], diagnosis.summary["issues"]["unreadable"]
    (24, 0)
    >>> sorted(os.listdir("doctor"))
    ['issues.csv', 'projector', 'report.html', 'summary.json']
    >>> transfer.inspect_data("pets", "small_cnn")
    Traceback (most recent call last):
        ...
    ValueError: Backbone 'small_cnn' has no pretrained weights, ...
    """
    started = time.perf_counter()
    data, output_dir = os.fspath(data), os.fspath(output_dir)
    similarity = duplicates.check_similarity(similarity)
    embeddings_lib.check_backbone(backbone, allow_random_weights)
    files = files_lib.list_files(data)
    label_issues.require_cleanlab()
    probe_nearest(output_dir)
    extractor = embeddings_lib.feature_extractor(
        backbone, allow_random_weights=allow_random_weights)
    cache = embeddings_lib.EmbeddingCache(_cache_directory(cache_dir),
                                          extractor.key)
    paths = [files.path(i) for i in range(len(files.names))]
    embedded = embeddings_lib.embed_files(paths, extractor, cache,
                                          verbose=verbose)
    analysed = time.perf_counter()
    readable = np.array([reason is None for reason in embedded.reasons])
    labels = np.asarray(files.labels)
    _check_readable(files, readable, embedded.reasons)
    parts = files_lib.split_parts(files, readable, validation_split, seed)
    with label_issues.single_threaded():
        found = _analyse(files, embedded, readable, similarity, seed)
    pairs, probabilities, flagged, scores, outliers, outlier_scores = found
    index = np.flatnonzero(readable)
    quality = np.full(len(paths), np.nan)
    quality[index] = scores
    small, counts = label_issues.class_imbalance(labels[index],
                                                 files.class_names)
    rows = _rows(files, embedded.reasons, parts, pairs)
    for position in flagged:
        i = int(index[position])
        rows.append(_row(files, i, "label_error", parts, scores[position],
                         suggested=files.class_names[
                             int(probabilities[position].argmax())]))
    for position in outliers:
        i = int(index[position])
        rows.append(_row(files, i, "outlier", parts,
                         outlier_scores[position]))
    for name, count in small.items():
        rows.append({"file": name, "issue": "class_imbalance",
                     "score": float(count),
                     "detail": f"{count} images; median class "
                               f"{int(np.median(list(counts.values())))}"})
    summary = _summary(files, rows, counts, pairs, parts, embedded)
    summary["settings"] = {
        "backbone": extractor.description.get("backbone"),
        "run_dir": extractor.description.get("run_dir"),
        "weights": extractor.description.get("weights", "the run's"),
        "image_size": extractor.image_size,
        "interpolation": extractor.interpolation,
        "similarity": similarity, "folds": files_lib.FOLDS,
        "validation_split": None if files.split_root else validation_split,
        "seed": seed, "cache": cache.path,
    }
    summary["outputs"] = _write(output_dir, files, rows, summary, embedded,
                                readable, parts)
    if fix_split:
        fixed, moved, dropped = fix_split_lib.leak_free_parts(
            parts, pairs, files.split_root)
        path = os.path.join(output_dir, "split.json")
        fix_split_lib.write_split(path, files, fixed, moved=moved,
                                  dropped=dropped)
        summary["outputs"]["split"] = path
        summary["split"] = {"moved_to_train": len(moved),
                            "left_out": len(dropped)}
    summary["seconds"] = dict(
        embedded.seconds, analyse=round(time.perf_counter() - analysed, 3),
        total=round(time.perf_counter() - started, 3))
    write_json(os.path.join(output_dir, "summary.json"), summary)
    return Diagnosis(summary, rows, files, embedded.embeddings, quality,
                     parts)


def _analyse(files, embedded, readable, similarity, seed):
    """Duplicate pairs, out-of-fold probabilities, label issues and
    outliers of the readable files."""
    pairs = (duplicates.exact_pairs(embedded.hashes, readable)
             + duplicates.near_pairs(embedded.embeddings, embedded.hashes,
                                     readable, similarity,
                                     embedded.thumbnails))
    index = np.flatnonzero(readable)
    labels = np.asarray(files.labels)[index]
    vectors = duplicates.normalized(embedded.embeddings[index])
    probabilities = label_issues.out_of_fold_probabilities(
        vectors, labels, len(files.class_names), seed)
    flagged, scores = label_issues.label_issues(labels, probabilities)
    outliers, outlier_scores = [], None
    if len(index) >= _MIN_FOR_OUTLIERS:
        outliers, outlier_scores = label_issues.outlier_scores(vectors)
    return pairs, probabilities, flagged, scores, outliers, outlier_scores


def _check_readable(files, readable, reasons):
    """Enough readable images per class for the folds, else an error
    naming the unreadable files."""
    counts = np.bincount(np.asarray(files.labels)[readable],
                         minlength=len(files.class_names))
    few = {files.class_names[i]: int(n) for i, n in enumerate(counts)
           if n < files_lib.FOLDS}
    if few:
        bad = [f"{files.names[i]} ({reasons[i]})"
               for i in np.flatnonzero(~readable)[:3]]
        raise ValueError(
            f"After leaving out {int((~readable).sum())} unreadable "
            f"image(s) (e.g. {bad}), class(es) {few} have fewer than "
            f"{files_lib.FOLDS} readable images, too few for the "
            "cross-validation. Replace the unreadable files or add images. "
            f"Received: data={files.root!r}"
        )


def _row(files, i, issue, parts, score=None, *, suggested=None,
         others=None, detail=None):
    return {
        "file": files.names[i], "issue": issue,
        "score": None if score is None else float(score),
        "given_label": files.class_names[files.labels[i]],
        "suggested_label": suggested, "part": parts[i],
        "other_files": " | ".join(others) if others else None,
        "detail": detail,
    }


def _rows(files, reasons, parts, pairs):
    """Unreadable files, exact and near-duplicates, leakage."""
    rows = [_row(files, i, "unreadable", parts, detail=reason)
            for i, reason in enumerate(reasons) if reason is not None]
    for kind, issue in (("exact", "exact_duplicate"),
                        ("near", "near_duplicate")):
        found = duplicates.partners([p for p in pairs if p.kind == kind])
        ordered = sorted(found, key=lambda i: -max(
            pair.similarity for _, pair in found[i]))
        for i in ordered:
            best = max(pair.similarity for _, pair in found[i])
            rows.append(_row(files, i, issue, parts, best, others=[
                files.names[j] for j, _ in found[i]]))
    leaks = duplicates.partners(duplicates.leaking_pairs(pairs, parts))
    for i in sorted(leaks):
        rows.append(_row(
            files, i, "leakage", parts,
            max(pair.similarity for _, pair in leaks[i]),
            others=[files.names[j] for j, _ in leaks[i]],
            detail=", ".join(sorted(
                f"{pair.kind} duplicate in {parts[j]}"
                for j, pair in leaks[i]))))
    return rows


def _summary(files, rows, counts, pairs, parts, embedded):
    issues = {issue: 0 for issue in outputs.ISSUES}
    for row in rows:
        issues[row["issue"]] += 1
    leaking = duplicates.leaking_pairs(pairs, parts)
    return {
        "data": files.root, "files": len(files.names),
        "classes": list(files.class_names), "class_counts": counts,
        "layout": "split folders" if files.split_root else "class folders",
        "issues": issues,
        "pairs": {"exact": sum(p.kind == "exact" for p in pairs),
                  "near": sum(p.kind == "near" for p in pairs),
                  "leaking": len(leaking)},
        "cached_embeddings": embedded.cached,
    }


def _write(output_dir, files, rows, summary, embedded, readable, parts):
    os.makedirs(output_dir, exist_ok=True)
    written = {
        "issues": os.path.join(output_dir, "issues.csv"),
        "report": os.path.join(output_dir, "report.html"),
        "projector": os.path.join(output_dir, outputs.PROJECTOR),
    }
    outputs.write_issues_csv(written["issues"], rows)
    shown = {row["file"] for row in rows}
    shown.update(name for row in rows
                 for name in (row.get("other_files") or "").split(" | "))
    paths = {name: files.path(i) for i, name in enumerate(files.names)
             if name in shown}
    write_report_page(written["report"], summary, rows, paths)
    issues_of = {}
    for row in rows:
        issues_of.setdefault(row["file"], []).append(row["issue"])
    index = np.flatnonzero(readable)
    outputs.write_projector(
        written["projector"], embedded.embeddings[index],
        embedded.thumbnails[index],
        {"file": [files.names[i] for i in index],
         "label": [files.class_names[files.labels[i]] for i in index],
         "part": [parts[i] or "-" for i in index],
         "issues": [",".join(issues_of.get(files.names[i], [])) or "-"
                    for i in index]})
    return written
