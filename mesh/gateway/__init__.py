"""The cloud side of fallback: :mod:`.server` is ``edgemesh gateway``, and
:mod:`.client` is the node's client for any Open Inference Protocol server."""
