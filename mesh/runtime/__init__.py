"""onnxruntime behind the mesh: finding and verifying model files (``loading``,
``model_files``), running them on a thread pool (``executor``), and the
:class:`~mesh.runtime.runtime.Runtime` that composes the two."""
