"""The Batch API's process: the batch runner (`dim batcher`), and the batch-status projection
the projector runs."""
