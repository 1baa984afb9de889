"""Cache keys derived from content (issue 10, fault 7): editing a model's code, a helper it imports, the
exporter or the FLOP counting rules changes the key of what they built, with no version string to bump."""

from __future__ import annotations

from pathlib import Path

import pytest

from common import source_hash
from common.packages import onnxruntime_version
from common.source_hash import project_modules, source_digest
from models import ModelSpec, get_model
from onnx_models.artifacts import ExportSettings, fp32_key


@pytest.fixture
def edited(monkeypatch, tmp_path):
    """``edit(module)``: from now on ``module``'s source reads as its file plus one more comment line."""
    real = source_hash._module_file

    def edit(module: str) -> None:
        copy = tmp_path / f"{module}.py"
        copy.write_text(real(module).read_text() + "\n# edited\n")
        previous = source_hash._module_file

        def patched(name: str) -> Path | None:
            return copy if name == module else previous(name)

        monkeypatch.setattr(source_hash, "_module_file", patched)
        source_hash._imports.cache_clear()

    yield edit
    source_hash._imports.cache_clear()


def test_digest_follows_a_models_imports_but_not_the_whole_registry():
    modules = project_modules("models.mask_rcnn", leaves=("models",), ignore=("onnx_models", "bench"))
    assert {"models.mask_rcnn", "models._rcnn", "models._detection", "models._vision", "models"} <= set(modules)
    # The registry is hashed but not followed: other models and the BYO loader are not this model's code.
    assert not {"models.resnet50", "models.byo", "onnx_models.store"} & set(modules)
    with pytest.raises(ValueError, match="no project module numpy"):
        source_digest("numpy")


def test_editing_a_helper_changes_only_the_models_that_use_it(edited):
    resnet, bert = get_model("resnet50"), get_model("bert")
    before = (resnet.code_digest(), bert.code_digest(), fp32_key(resnet, "tiny", ExportSettings()))
    edited("models._vision")
    assert resnet.code_digest() != before[0] and bert.code_digest() == before[1]
    assert fp32_key(resnet, "tiny", ExportSettings()) != before[2]


def test_fp32_key_covers_model_file_exporter_and_opset(edited, monkeypatch):
    spec = get_model("wide_deep")
    key = fp32_key(spec, "tiny", ExportSettings())
    assert fp32_key(spec, "tiny", ExportSettings(seed=1)) != key
    edited("models.wide_deep")
    after_model = fp32_key(spec, "tiny", ExportSettings())
    assert after_model != key
    edited("exporters.tensorflow")
    after_exporter = fp32_key(spec, "tiny", ExportSettings())
    assert after_exporter != after_model
    monkeypatch.setattr("exporters.OPSET", 18)
    assert fp32_key(spec, "tiny", ExportSettings()) != after_exporter


def test_a_brought_in_model_is_keyed_by_its_file():
    spec = ModelSpec(
        name="byo/x",
        category="byo",
        framework="onnx",
        task="generic",
        paper_model=None,
        paper_batch=1,
        summary="",
        configs={"full": {}, "tiny": {}},
        inputs=lambda cfg: [],
        outputs=(),
        build=lambda cfg, seed: None,
        version="0123abcd",
    )
    assert spec.code_digest() == "0123abcd"


def test_onnxruntime_version_is_the_installed_build():
    import onnxruntime

    assert onnxruntime_version() == onnxruntime.__version__


def test_reference_and_flops_caches_are_keyed_by_inputs_and_rules(edited, monkeypatch):
    """The FP32 references are rebuilt when the model's sampler code changes (the inputs change with it), and
    the FLOP counts when the counting rules change; before, both were keyed by the FP32 file alone."""
    from bench.model_facts import count_flops, reference_outputs
    from onnx_models.artifacts import ensure_fp32

    spec = get_model("ncf")
    ensure_fp32(spec, "tiny")
    first = reference_outputs("ncf", "tiny", 2, 2)
    assert reference_outputs("ncf", "tiny", 2, 2) == first
    monkeypatch.setattr(ModelSpec, "code_digest", lambda self: "another sampler")
    second = reference_outputs("ncf", "tiny", 2, 2)
    assert second != first and Path(second).is_file()
    counted = count_flops("ncf", "tiny", [2])
    cache = {p.name for p in Path(second).parent.glob("flops-*.json")}
    edited("analysis.flops")
    assert count_flops("ncf", "tiny", [2]) == counted
    assert {p.name for p in Path(second).parent.glob("flops-*.json")} - cache
