"""Exact and near-duplicates, and the leakage they cause between parts.

Exact duplicates share their bytes (sha256). Near-duplicates are pairs of
images whose embeddings have a cosine similarity of at least a threshold,
found among each image's nearest neighbours with scikit-learn's
`NearestNeighbors` (cosine metric): resized, re-encoded or slightly
cropped copies. Both kinds join images into groups (connected components);
a group that spans two parts (train and val, or test) leaks.
"""

import collections
import dataclasses

import numpy as np

# Neighbours searched per image: a group larger than this is still joined
# through its members' neighbours.
NEIGHBOURS = 10
# Cosine similarity of EfficientNet-Lite0 embeddings above which two images
# are near-duplicates (benchmarks/doctor.py measured it on Fashion-MNIST).
DEFAULT_SIMILARITY = 0.97


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
            "are near-duplicates, a number in (0, 1], e.g. 0.97. "
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


def near_pairs(embeddings, hashes, usable, similarity):
    """Pairs of usable files, not byte-identical, whose embeddings'
    cosine similarity is at least `similarity`."""
    from sklearn.neighbors import NearestNeighbors  # scikit-learn: core dep

    index = np.flatnonzero(usable)
    if len(index) < 2:
        return []
    vectors = normalized(embeddings[index])
    count = min(NEIGHBOURS + 1, len(index))
    search = NearestNeighbors(n_neighbors=count, metric="cosine",
                              algorithm="brute").fit(vectors)
    distances, neighbours = search.kneighbors(vectors)
    found = {}
    for row, (row_distances, row_neighbours) in enumerate(
        zip(distances, neighbours, strict=True)
    ):
        for distance, column in zip(row_distances, row_neighbours,
                                    strict=True):
            score = 1.0 - float(distance)
            if column == row or score < similarity:
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
