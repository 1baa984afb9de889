"""Low-precision artifacts: FP16 conversion and calibrated INT8 (QDQ) quantization of the FP32 exports."""
