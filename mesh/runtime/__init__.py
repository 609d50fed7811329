"""onnxruntime behind the mesh: finding and verifying model files, and running
them on a thread pool."""
