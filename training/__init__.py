"""Offline training pipeline: encoders, feature cache, decoders, evaluation (imports TensorFlow)."""
