"""Using a trained model: load it from its weights file (``trained``), upscale arrays
(``upscale``), image files and folders (``files``), video (``video``), and export it for
deployment (``onnx``). Depends on ``core``, ``models`` and ``data`` only (and on PyAV or
onnx when asked)."""
