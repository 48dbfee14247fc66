"""Keras -> ONNX export: encoder and step decoder, parity check, model bundle, int8 encoder.

``python -m export --run-dir RUN --out models/NAME`` turns a training run into a bundle that
``service.model`` serves; see ``export.bundle`` for the steps and ``service.manifest`` for the
format.
"""
