"""`python -m predictor.bench`: throughput and latency of a served detector against the
in-process PyTorch limit, on the same model and the same images.

    # everything on this machine, one run: in-process limits, then a local server under load
    python -m predictor.bench --serve --in-process --concurrency 1,8,64 --plot bench.png

    # a running endpoint (local or a deployed InferenceService)
    python -m predictor.bench --grpc localhost:8081 --url localhost:8080 --protocol grpc,rest

Without --model_dir an architecture-identical YOLOv5s (random weights: the compute cost of
the real one) is generated in a temporary directory. Without --images the repository's
samples/ are used, else generated scenes.
"""
