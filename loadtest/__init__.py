"""Load generator and benchmark for the captioner service.

``python -m loadtest run|ramp`` drives open-loop (constant or Poisson arrivals) or closed-loop
load at a running service and reports throughput, latency from the scheduled send time, errors
and the service's own batch-size and queue-wait metrics; ``python -m loadtest bench`` (``make
bench``) measures the offline ceiling, the service with and without batching, a naive baseline,
int8 against fp32 and the encoder's roofline, and writes ``docs/benchmarks.md``.
"""
