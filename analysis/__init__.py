"""Static analysis of exported ONNX graphs: FLOP, parameter and byte counts (see ``analysis.flops``)."""
