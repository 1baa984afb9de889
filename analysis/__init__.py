"""Pure functions over numbers, graphs and rows: FLOP, parameter and byte counts of ONNX graphs
(``analysis.flops``), accuracy metrics against FP32 or labels (``analysis.accuracy``), parity, verdicts, roofs as
data, op profiles and quantization error. Nothing here writes files or starts work; it imports only ``common``."""
