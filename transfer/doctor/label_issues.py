"""Likely label errors, outliers and class imbalance, from embeddings.

Label errors follow confident learning (Northcutt et al., 2021) as
cleanlab implements it: out-of-fold predicted probabilities of a simple
classifier on the embeddings (a scikit-learn logistic regression on
standardized embeddings, `FOLDS`-fold stratified cross-validation, so no
file is scored by a model that saw its label) go to
`cleanlab.filter.find_label_issues`, and every file gets cleanlab's label
quality score (`cleanlab.rank.get_label_quality_scores`, self-confidence:
the probability of its given label). Outliers are cleanlab's
`OutOfDistribution` scores of the embeddings (distance to the nearest
neighbours), flagged below Tukey's lower fence.
"""

import numpy as np

from transfer.doctor.files import FOLDS

# A class with fewer images than this fraction of the median class is
# under-represented.
IMBALANCE_RATIO = 0.5
_EXTRA = 'pip install "keras-transfer[doctor]"'


def require_cleanlab():
    """Imports cleanlab, or raises `ImportError` naming the extra."""
    try:
        import cleanlab  # optional: the doctor extra
    except ImportError:
        raise ImportError(
            "The data doctor finds label errors with cleanlab, which is not "
            f"installed. Install it with: {_EXTRA}"
        ) from None
    return cleanlab


def single_threaded():
    """A context in which BLAS and OpenMP use one thread: the small fits
    here took 57 s with the default threads on a loaded 2-core machine,
    1 s with one."""
    from threadpoolctl import threadpool_limits  # installed with sklearn

    return threadpool_limits(1)


def out_of_fold_probabilities(embeddings, labels, num_classes, seed=0):
    """`(n, num_classes)` probabilities, each from a model that did not
    train on that file (stratified `FOLDS`-fold cross-validation)."""
    from sklearn.linear_model import LogisticRegression  # heavy: sklearn
    from sklearn.model_selection import StratifiedKFold
    from sklearn.model_selection import cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classifier = make_pipeline(
        StandardScaler(), LogisticRegression(max_iter=1000, C=0.1))
    folds = StratifiedKFold(FOLDS, shuffle=True, random_state=seed)
    probabilities = cross_val_predict(
        classifier, embeddings, labels, cv=folds, method="predict_proba")
    if probabilities.shape[1] != num_classes:  # a class absent from a fold
        full = np.zeros((len(labels), num_classes))
        full[:, np.unique(labels)] = probabilities
        probabilities = full
    return probabilities


def label_issues(labels, probabilities):
    """`(flagged, scores)`: the indices cleanlab flags as label errors,
    most likely first, and every file's label quality score (lower is
    worse)."""
    require_cleanlab()
    from cleanlab.filter import find_label_issues  # optional: doctor extra
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels)
    # One process: cleanlab's default forks one per core.
    flagged = find_label_issues(
        labels, probabilities, return_indices_ranked_by="self_confidence",
        n_jobs=1)
    scores = get_label_quality_scores(labels, probabilities)
    return [int(i) for i in flagged], np.asarray(scores, dtype="float64")


def outlier_scores(embeddings):
    """`(flagged, scores)`: cleanlab's out-of-distribution scores of the
    embeddings (lower is more unusual) and the files below Tukey's lower
    fence, most unusual first."""
    require_cleanlab()
    from cleanlab.outlier import OutOfDistribution  # optional: doctor extra

    scores = OutOfDistribution().fit_score(features=embeddings,
                                           verbose=False)
    first, third = np.percentile(scores, [25, 75])
    fence = first - 1.5 * (third - first)
    flagged = np.flatnonzero(scores < fence)
    flagged = flagged[np.argsort(scores[flagged])]
    return [int(i) for i in flagged], np.asarray(scores, dtype="float64")


def class_imbalance(labels, class_names):
    """`{class: count}` of the classes with fewer images than
    `IMBALANCE_RATIO` times the median class, and every class's count."""
    counts = np.bincount(np.asarray(labels), minlength=len(class_names))
    median = float(np.median(counts))
    small = {class_names[i]: int(n) for i, n in enumerate(counts)
             if n < IMBALANCE_RATIO * median}
    return small, {name: int(n) for name, n in zip(class_names, counts,
                                                  strict=True)}
