"""Requests per second and latency of `transfer serve` on loopback.

Builds a classifier (random weights: speed does not depend on them),
serves it in this process with `transfer.serving.app.create_app` on
uvicorn (a thread, a free loopback port), and loads it with 1 and then 8
concurrent clients, each a thread with one keep-alive connection posting a
PNG (`Content-Type: image/png`) again and again. Each level runs for
`--seconds` or `--max-requests` requests, whichever comes first (the loop
stops itself), after an unmeasured warm-up that traces every batch shape.
Reports requests/s, p50/p99 latency in ms, errors, the batcher's mean batch
size, and the load average before and after: on a shared machine the
figures mean little without it.

    python benchmarks/serve.py --smoke               # small_cnn, 32 px, 2 s a level
    python benchmarks/serve.py [--backbone efficientnet_lite0] [--seconds 15]
"""

import argparse
import http.client
import io
import json
import os
import pathlib
import platform
import statistics
import sys
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HOST = "127.0.0.1"


def _png(image_size):
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(
        0, 256, (image_size, image_size, 3), dtype="uint8")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def _client(port, body, deadline, budget, latencies, errors):
    """Posts `body` until `deadline` or the shared `budget` runs out."""
    connection = http.client.HTTPConnection(HOST, port, timeout=60)
    try:
        while time.monotonic() < deadline:
            with budget["lock"]:
                if budget["left"] <= 0:
                    return
                budget["left"] -= 1
            start = time.perf_counter()
            try:
                connection.request("POST", "/predict", body=body,
                                   headers={"Content-Type": "image/png"})
                response = connection.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                connection.close()
                connection = http.client.HTTPConnection(HOST, port, timeout=60)
            if ok:
                latencies.append(time.perf_counter() - start)
            else:
                errors.append(1)
    finally:
        connection.close()


def _level(port, body, clients, seconds, max_requests):
    latencies, errors = [], []
    budget = {"left": max_requests, "lock": threading.Lock()}
    deadline = time.monotonic() + seconds
    threads = [threading.Thread(target=_client, args=(
        port, body, deadline, budget, latencies, errors)) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    ms = sorted(1000 * s for s in latencies)

    def percentile(q):
        return round(ms[min(len(ms) - 1, int(q * len(ms)))], 2) if ms else None

    return {
        "clients": clients,
        "requests": len(ms),
        "errors": len(errors),
        "seconds": round(elapsed, 2),
        "requests_per_second": round(len(ms) / elapsed, 1),
        "p50_ms": round(statistics.median(ms), 2) if ms else None,
        "p99_ms": percentile(0.99),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="small_cnn at 32 px, 2 s a level")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--max-requests", type=int, default=5000)
    parser.add_argument("--clients", default="1,8")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--output", help="also write the JSON here")
    args = parser.parse_args()
    if args.smoke:
        args.backbone, args.image_size, args.seconds = "small_cnn", 32, 2.0

    load_before = os.getloadavg()
    import keras
    import uvicorn

    import transfer
    from transfer.serving import server
    from transfer.serving.app import create_app

    model = transfer.build_classifier(args.backbone, 5, weights=None,
                                      image_size=args.image_size)
    app = create_app(model, title=args.backbone,
                     max_batch_size=args.max_batch_size)
    sock = server.bind_socket(HOST, 0)
    port = sock.getsockname()[1]
    uvicorn_server = uvicorn.Server(uvicorn.Config(
        app, log_config=None, access_log=False, lifespan="on"))
    thread = threading.Thread(target=uvicorn_server.run,
                              kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not uvicorn_server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    body = _png(args.image_size)
    levels = [int(c) for c in args.clients.split(",")]
    try:
        # Unmeasured: every batch shape (1, 2, 4, 8) traced or compiled.
        _level(port, body, max(levels), 2.0, 200)
        results = []
        for clients in levels:
            before = dict(app.state.batcher.stats)
            result = _level(port, body, clients, args.seconds,
                            args.max_requests)
            after = app.state.batcher.stats
            batches = after["batches"] - before["batches"]
            result["mean_batch_size"] = round(
                (after["requests"] - before["requests"]) / batches, 2
            ) if batches else None
            results.append(result)
    finally:
        uvicorn_server.should_exit = True
        thread.join(30)
    report = {
        "benchmark": "serve",
        "backbone": args.backbone,
        "image_size": args.image_size,
        "weights": None,
        "backend": keras.config.backend(),
        "max_batch_size": args.max_batch_size,
        "seconds_per_level": args.seconds,
        "max_requests_per_level": args.max_requests,
        "levels": results,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "smoke": args.smoke,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        pathlib.Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
