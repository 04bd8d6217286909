"""`python -m predictor.bench`: throughput and latency of a served detector against the
in-process PyTorch limit, on the same model and the same images.

    # everything on this machine, one run: in-process limits, then a local server under load
    python -m predictor.bench --serve --in-process --concurrency 1,8,64 --plot bench.png

    # a running endpoint (local or a deployed InferenceService)
    python -m predictor.bench --grpc localhost:8081 --url localhost:8080 --protocol grpc,rest

Without --model_dir the model is .cache/checkpoints/yolov5s-shapes/best.pt, a yolov5s in
train.py's own (stripped) format: make it with `python -m predictor.training.genuine`.
The run prints which backend serves the model and why. Without --images the repository's
samples/ are used, else generated scenes.
"""
