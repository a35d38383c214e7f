"""Export formats and quantization modes of one model, judged by accuracy.

For every format and quantization mode this backend exports
(`transfer.export.QUANTIZATIONS`), `transfer.export.export_model` writes the
artifact, calibrating `int8` on up to 200 images of the run's training split,
and judges it on labelled images: accuracy of the artifact and of the Keras
model, top-1 agreement, file size, median batch-1 latency, and images/s of
the accuracy pass in batches of 32 (first batch left out). One JSON line per
export, then a markdown table; `--output` writes the rows with the date,
the backend and the load average before and after.

    python benchmarks/export.py --run runs/flowers --data flowers_test/
    python benchmarks/export.py --smoke   # a random tiny CNN on synthetic
                                          # images: checks the script only

Run it once per backend (`KERAS_BACKEND`): LiteRT and SavedModel need
TensorFlow, ONNX TensorFlow or torch.
"""

import argparse
import json
import os
import tempfile
import time


def _smoke_inputs():
    import transfer

    model = transfer.build_classifier("small_cnn", 2, weights=None,
                                      image_size=32)
    calibration, _ = transfer.synthetic_images(100, 32, 2, seed=1)
    x, y = transfer.synthetic_images(64, 32, 2, seed=2)
    return model, calibration, (x, y)


def _run_inputs(run_dir, data_dir, calibration_images):
    from transfer import evaluation_data
    from transfer import workflow

    model, config = workflow.load_run(run_dir)
    calibration = evaluation_data.training_images(
        run_dir, config, model, max_images=calibration_images)
    x, y = evaluation_data.load_labelled_data(data_dir, model, config,
                                              run_dir=run_dir)
    return model, calibration, (x, y)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a finished `transfer train` run")
    parser.add_argument("--data", help="labelled folder to judge on")
    parser.add_argument("--calibration-images", type=int, default=200)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny random model and synthetic images")
    parser.add_argument("--output", help="also write the rows as JSON here")
    args = parser.parse_args()
    if not args.smoke and not (args.run and args.data):
        parser.error("pass --run RUN_DIR --data DIR, or --smoke")
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    load_before = [round(v, 2) for v in os.getloadavg()]
    import keras

    from transfer import _backend
    from transfer import export as deploy

    if args.smoke:
        model, calibration, (x, y) = _smoke_inputs()
    else:
        model, calibration, (x, y) = _run_inputs(
            args.run, args.data, args.calibration_images)
    evaluation = deploy.Evaluation(x, y)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for export_format in deploy.FORMATS:
            if keras.config.backend() not in (
                _backend.EXPORT_BACKENDS[export_format]
            ):
                continue
            for quantize in (None, *deploy.QUANTIZATIONS.get(export_format,
                                                            ())):
                name = f"{quantize or 'float32'}-" + (
                    deploy.FILE_NAMES[export_format])
                result = deploy.export_model(
                    model, os.path.join(scratch, name), export_format,
                    quantize=quantize, calibration=calibration,
                    evaluation=evaluation)
                row = dict(result["evaluation"], format=export_format,
                           quantize=quantize or "float32",
                           backend=keras.config.backend(),
                           max_abs_diff=result["max_abs_diff"])
                rows.append(row)
                print(json.dumps(row), flush=True)
    print("\n| format | quantize | accuracy (Keras) | top-1 agreement "
          "| size (bytes) | batch-1 latency (ms) | batch-32 img/s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['format']} | {r['quantize']} | "
              f"{r['artifact_accuracy']:.4f} ({r['keras_accuracy']:.4f}) | "
              f"{r['top1_agreement']:.4f} | {r['file_size_bytes']:,} | "
              f"{r['latency_ms_batch1']:.2f} | "
              f"{r['images_per_second'] or float('nan'):.1f} |")
    if args.output:
        with open(args.output, "w") as f:
            json.dump({
                "benchmark": "export", "date": started,
                "backend": keras.config.backend(), "run": args.run,
                "data": args.data, "smoke": args.smoke,
                "calibration_images": args.calibration_images,
                "load_average_before": load_before,
                "load_average_after": [round(v, 2) for v in os.getloadavg()],
                "rows": rows,
            }, f, indent=2)


if __name__ == "__main__":
    main()
