"""Measurements that need a GPU (``python -m ops.gpu.idefics2_fp16``)."""
