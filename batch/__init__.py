"""Bulk captioning: ``captioner caption`` over folders, lists and manifests (sources, result store and resume, sidecars, engines)."""
