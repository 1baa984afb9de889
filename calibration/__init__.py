"""Low-precision artifacts from the FP32 exports: one builder module per lower precision of the registry
(``calibration.fp16``, ``calibration.int8``: ``key`` and ``build``), the graph clean-up they share, calibration
data, INT8 weight ranges and plans, and TensorRT's Q/DQ rules. The store (``onnx_models``) calls the builders;
they use the catalogue and ``common``, never the store, engines or the run pipeline."""
