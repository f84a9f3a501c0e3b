"""Using a trained model: load it from its weights file (``trained``), upscale arrays
(``upscale``), image files and folders (``files``), video (``video``), and export it for
deployment (``onnx``). Depends on ``core`` and ``models`` only (and PyAV / onnx when asked)."""
