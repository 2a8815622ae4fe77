"""The proxy protocol (``python -m ops.proxy.proxy``): recipes compared in minutes."""
