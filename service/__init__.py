"""captioner serving: FastAPI app, micro-batcher and ONNX Runtime over a model bundle.

Nothing in this package imports TensorFlow.
"""
