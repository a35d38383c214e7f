"""Requests that arrive together, predicted together: one model call each.

`transfer serve` hands every decoded image to one `Batcher`. A single worker
thread owns the model: it takes the first waiting image, gathers the others
that arrive within `max_delay` seconds (or are already waiting, when the
previous batch took long) up to `max_batch_size`, and runs them through the
model in one call. Under load, batches fill up by themselves; a lone
request waits at most `max_delay`.
"""

import concurrent.futures
import logging
import queue
import threading
import time

logger = logging.getLogger(__name__)

_STOP = object()


class Batcher:
    """Runs `predict` on batches of items submitted from any thread.

    `submit(item)` returns a `concurrent.futures.Future` of that item's
    row of `predict([item, ...])`. An error in `predict` is set on every
    future of its batch; the worker carries on with the next batch. A
    future cancelled before its batch runs (a client that went away) is
    left out of the batch.

    Args:
        predict: a function from a list of items to a sequence with one
            result per item, in order. Called from the worker thread only.
        max_batch_size: the most items per call. Defaults to `8`.
        max_delay: seconds to wait for more items after the first one of a
            batch. Defaults to `0.005`.

    Example:

    >>> from transfer.serving.batcher import Batcher
    >>> batcher = Batcher(lambda items: [2 * i for i in items])
    >>> batcher.start()
    >>> futures = [batcher.submit(i) for i in range(3)]
    >>> [f.result(timeout=10) for f in futures]
    [0, 2, 4]
    >>> batcher.close()
    >>> batcher.stats["requests"]
    3
    """

    def __init__(self, predict, *, max_batch_size=8, max_delay=0.005):
        if isinstance(max_batch_size, bool) or not isinstance(
            max_batch_size, int
        ) or max_batch_size < 1:
            raise ValueError(
                "`max_batch_size` must be a positive integer. "
                f"Received: max_batch_size={max_batch_size!r}"
            )
        if not 0 <= max_delay <= 1:
            raise ValueError(
                "`max_delay` must be between 0 and 1 second. "
                f"Received: max_delay={max_delay!r}"
            )
        self.predict = predict
        self.max_batch_size = max_batch_size
        self.max_delay = max_delay
        self.stats = {"requests": 0, "batches": 0, "largest_batch": 0}
        self._queue = queue.Queue()
        self._thread = None
        self._lock = threading.Lock()

    def start(self):
        """Starts the worker thread (once)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._work, name="transfer-serve-batcher",
                    daemon=True)
                self._thread.start()

    def submit(self, item):
        """Queues `item`; returns the future of its result."""
        if self._thread is None or not self._thread.is_alive():
            raise RuntimeError("The batcher is not running: call start().")
        future = concurrent.futures.Future()
        self._queue.put((item, future))
        return future

    def close(self, timeout=30):
        """Stops the worker after the items already queued."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            thread.join(timeout)

    def _gather(self, first):
        """`(batch, stop)`: `first` and the items arriving soon after."""
        batch = [first]
        deadline = time.monotonic() + self.max_delay
        while len(batch) < self.max_batch_size:
            try:
                # Already-waiting items are taken without waiting.
                item = self._queue.get(
                    timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            batch.append(item)
        return batch, False

    def _work(self):
        stop = False
        while not stop:
            first = self._queue.get()
            if first is _STOP:
                break
            batch, stop = self._gather(first)
            # A cancelled future (its client went away) is left out.
            batch = [(item, future) for item, future in batch
                     if future.set_running_or_notify_cancel()]
            if not batch:
                continue
            self.stats["requests"] += len(batch)
            self.stats["batches"] += 1
            self.stats["largest_batch"] = max(self.stats["largest_batch"],
                                              len(batch))
            try:
                results = self.predict([item for item, _ in batch])
            except Exception as e:  # noqa: BLE001 (each request answers)
                logger.exception("Prediction of a batch of %d failed",
                                 len(batch))
                for _, future in batch:
                    future.set_exception(e)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                future.set_result(result)
