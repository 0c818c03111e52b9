"""Shared plumbing for the training scripts: dist, model (FSDP2), vllm_engine, metrics, checkpoint."""
