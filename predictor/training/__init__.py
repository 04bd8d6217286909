"""Train the bundled demo detector: synthetic shapes data, YOLOv5-style loss, mAP.

`synthetic` draws the scenes, `data` augments them into batches, `loss` is the YOLOv5 loss,
`trainer` runs the training (`model_store/make_demo_model.py` is its command line) and
`metrics` computes average precision.
"""
