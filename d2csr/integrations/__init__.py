"""D2C-SR outside d2csr: ONNX export (:mod:`.onnx_export`) and spandrel, the model loader of ComfyUI and chaiNNer
(:mod:`.spandrel`).

Both depend on optional packages (``pip install 'd2csr[onnx]'``, ``pip install 'd2csr[spandrel]'``) that are
imported only when used: ``import d2csr`` never loads onnx, onnxruntime or spandrel, and neither does importing
these modules.
"""
