"""Other checkpoint formats: torch.distributed.checkpoint directories (read), safetensors
(read and write), and the ``reshard convert`` command. See docs/INTEROP.md."""
