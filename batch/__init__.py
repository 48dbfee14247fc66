"""Bulk captioning, ``captioner caption``: sources, result store and resume, sidecars, engines."""
