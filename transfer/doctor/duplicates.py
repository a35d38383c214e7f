"""Exact and near-duplicates, and the leakage they cause between parts.

Exact duplicates share their bytes (sha256). Near-duplicates are pairs of
images among each image's nearest neighbours (scikit-learn's
`NearestNeighbors`, cosine metric on the embeddings) whose embeddings have
a cosine similarity of at least a threshold (slightly cropped copies), or
whose embeddings are at least `CANDIDATE_SIMILARITY` alike and whose
16-pixel grayscale thumbnails correlate at `PIXEL_CORRELATION` or more
(resized or re-encoded copies: the same pixels at another size or
compression, which move small images' embeddings more than their pixels).
Both kinds join images into groups (connected components); a group that
spans two parts (train and val, or test) leaks.
"""

import collections
import dataclasses

import numpy as np

# Neighbours searched per image: a group larger than this is still joined
# through its members' neighbours.
NEIGHBOURS = 10
# Cosine similarity of EfficientNet-Lite0 embeddings above which two images
# are near-duplicates: on 1,000 Fashion-MNIST training images, 0.95 flagged
# 14 files and 0.97 two (benchmarks/doctor.py measures recall).
DEFAULT_SIMILARITY = 0.95
# Neighbours at least this alike whose thumbnails correlate at
# PIXEL_CORRELATION are near-duplicates too: resized and re-encoded copies
# of Fashion-MNIST test images correlated at 0.99 or more, distinct
# neighbours at most 0.993.
CANDIDATE_SIMILARITY = 0.85
PIXEL_CORRELATION = 0.998
_PIXEL_SIZE = 16


@dataclasses.dataclass(frozen=True)
class Pair:
    """Two files (indices) that are duplicates.

    Attributes:
        first: the index of one file.
        second: the index of the other (`first < second`).
        kind: `"exact"` (same bytes) or `"near"` (similar embeddings).
        similarity: the cosine similarity of their embeddings.
    """

    first: int
    second: int
    kind: str
    similarity: float


def check_similarity(similarity):
    """Raises `ValueError` unless `similarity` is in `(0, 1]`."""
    if isinstance(similarity, bool) or not isinstance(
        similarity, (int, float)
    ) or not 0 < similarity <= 1:
        raise ValueError(
            "`similarity` is the cosine similarity above which two images "
            "are near-duplicates, a number in (0, 1], e.g. 0.95. "
            f"Received: similarity={similarity!r}"
        )
    return float(similarity)


def normalized(embeddings):
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings / np.maximum(norms, 1e-12)


def exact_pairs(hashes, usable):
    """Pairs of usable files with the same sha256 (each to the group's
    first file)."""
    first_of = {}
    pairs = []
    for i, digest in enumerate(hashes):
        if not usable[i]:
            continue
        if digest in first_of:
            pairs.append(Pair(first_of[digest], i, "exact", 1.0))
        else:
            first_of[digest] = i
    return pairs


def pixel_signatures(thumbnails):
    """Zero-mean, unit-length 16-pixel grayscale thumbnails (their dot
    product is the pixels' correlation)."""
    from PIL import Image  # Pillow: installed with the data loaders

    gray = np.stack([
        np.asarray(Image.fromarray(thumb).convert("L").resize(
            (_PIXEL_SIZE, _PIXEL_SIZE), Image.Resampling.BOX), "float32")
        for thumb in thumbnails
    ]).reshape(len(thumbnails), -1) if len(thumbnails) else np.zeros((0, 1))
    gray = gray - gray.mean(axis=1, keepdims=True)
    return normalized(gray)


def near_pairs(embeddings, hashes, usable, similarity, thumbnails=None):
    """Pairs of usable files, not byte-identical, whose embeddings'
    cosine similarity is at least `similarity`, or (with `thumbnails`) at
    least `CANDIDATE_SIMILARITY` with thumbnails that correlate at
    `PIXEL_CORRELATION` or more."""
    from sklearn.neighbors import NearestNeighbors  # scikit-learn: core dep

    index = np.flatnonzero(usable)
    if len(index) < 2:
        return []
    vectors = normalized(embeddings[index])
    count = min(NEIGHBOURS + 1, len(index))
    search = NearestNeighbors(n_neighbors=count, metric="cosine",
                              algorithm="brute").fit(vectors)
    distances, neighbours = search.kneighbors(vectors)
    pixels = None if thumbnails is None else pixel_signatures(
        thumbnails[index])
    found = {}
    for row, (row_distances, row_neighbours) in enumerate(
        zip(distances, neighbours, strict=True)
    ):
        for distance, column in zip(row_distances, row_neighbours,
                                    strict=True):
            score = 1.0 - float(distance)
            if column == row or score < min(similarity,
                                            CANDIDATE_SIMILARITY):
                continue
            if score < similarity and (pixels is None or float(
                pixels[row] @ pixels[column]) < PIXEL_CORRELATION):
                continue
            first, second = sorted((int(index[row]), int(index[column])))
            if hashes[first] == hashes[second]:
                continue  # an exact duplicate, counted as such
            found[(first, second)] = min(1.0, score)
    return [Pair(first, second, "near", score)
            for (first, second), score in sorted(found.items())]


def groups(count, pairs):
    """Connected components of the duplicate pairs: `{file: group id}`
    for every file in a pair (a group id is its smallest file)."""
    parent = list(range(count))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for pair in pairs:
        a, b = root(pair.first), root(pair.second)
        if a != b:
            parent[max(a, b)] = min(a, b)
    members = {i for pair in pairs for i in (pair.first, pair.second)}
    return {i: root(i) for i in sorted(members)}


def leaking_pairs(pairs, parts):
    """The pairs whose two files lie in different parts."""
    return [pair for pair in pairs
            if parts[pair.first] != parts[pair.second]]


def partners(pairs):
    """`{file: [(other file, pair), ...]}` of every file in a pair."""
    found = collections.defaultdict(list)
    for pair in pairs:
        found[pair.first].append((pair.second, pair))
        found[pair.second].append((pair.first, pair))
    return found
