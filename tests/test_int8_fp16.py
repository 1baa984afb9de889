"""The INT8-with-FP16 precision (``int8fp16``, ``calibration.int8_fp16``): made from the ``tensorrt`` INT8 recipe,
float layers and Q/DQ scales in FP16 at opset 19, FP32 inputs and outputs; it keeps TensorRT's Q/DQ rules
(``calibration.tensorrt_rules``), a scale of the wrong type breaks them; its outputs agree with FP32 about as well
as the INT8 and FP16 artifacts' do; and only the engines that can run it plan cells of it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from analysis.accuracy import compare
from analysis.roofs import Roofs
from bench.config import RunConfig
from bench.plan import plan
from calibration import tensorrt_rules
from calibration.int8_fp16 import OPSET, sort_nodes
from common import precisions
from common.graphs import all_graphs
from common.ort_session import run_once
from onnx_models import model_spec
from onnx_models.artifacts import ensure, resolve
from onnx_models.store import ModelStore

MODELS = ("resnet50", "ncf")


@pytest.fixture(scope="module")
def built() -> dict[str, onnx.ModelProto]:
    """The tiny int8fp16 artifact of each of ``MODELS`` (its INT8 sibling first, as a plan orders them)."""
    models = {}
    for name in MODELS:
        ensure(resolve(name, "tiny", "int8", "tensorrt"))
        models[name] = onnx.load(str(ensure(resolve(name, "tiny", "int8fp16", "tensorrt"))))
    return models


def _scale_of(model: onnx.ModelProto, op: str):
    inits = {t.name: t for t in model.graph.initializer}
    return [inits[n.input[1]] for n in model.graph.node if n.op_type == op and n.input[1] in inits]


@pytest.mark.parametrize("name", MODELS)
def test_the_artifact_keeps_tensorrts_rules_and_says_what_it_is(built, name):
    model = built[name]
    entry = ModelStore(name, "tiny").entry("int8fp16-tensorrt")
    record = entry["tensorrt_conformance"]
    assert record["passed"] and record["rules"] == len(tensorrt_rules.RULES), tensorrt_rules.row_text(record)
    assert tensorrt_rules.check(model) == []
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == OPSET
    # FP32 in and out, like the FP16 artifact; scales float16, zero points int8.
    assert {i.type.tensor_type.elem_type for i in model.graph.input} <= {TensorProto.FLOAT, TensorProto.INT64}
    assert {o.type.tensor_type.elem_type for o in model.graph.output} == {TensorProto.FLOAT}
    scales = _scale_of(model, "DequantizeLinear") + _scale_of(model, "QuantizeLinear")
    assert scales and {s.data_type for s in scales} == {TensorProto.FLOAT16}
    inits = {t.name: t for t in model.graph.initializer}
    zeros = {inits[n.input[2]].data_type for n in model.graph.node if n.op_type.endswith("QuantizeLinear")}
    assert zeros == {TensorProto.INT8}
    # The float layers are FP16: no float32 initializer is left but the scales' sources (none) and casts' I/O.
    assert not [t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT]
    # Made from the INT8 artifact's recipe: the same calibration ranges and weights, and it says so.
    int8 = ModelStore(name, "tiny").entry("int8-tensorrt")
    assert entry["calibration"]["cache"] == int8["calibration"]["cache"] and entry["calibration"]["cache_reused"]
    assert entry["quantized_ops"] == int8["quantized_ops"] and entry["flavour"] == "tensorrt"
    assert entry["mixed"]["scale_type"] == "float16" and entry["mixed"]["opset"]["to"] == OPSET


def test_the_key_is_derived_from_the_int8_recipe(built, monkeypatch):
    """A changed INT8 recipe (here its weight width) is a changed int8fp16 artifact; the same one is reused."""
    from calibration import int8_fp16

    artifact = resolve("ncf", "tiny", "int8fp16", "tensorrt")
    made = ModelStore("ncf", "tiny").path(artifact.name).read_bytes()
    jobs = []

    def build(job, out):
        jobs.append(job)
        out.write_bytes(made)
        return {}

    monkeypatch.setattr(int8_fp16, "build", build)
    ensure(artifact)
    assert jobs == []  # built by the fixture, same inputs: reused
    from dataclasses import replace

    ensure(replace(artifact, weight_bits=7))
    assert len(jobs) == 1 and jobs[0].artifact.weight_bits == 7


def test_only_the_tensorrt_flavour_is_made():
    from calibration.int8_fp16 import _int8_job
    from onnx_models.artifacts import BuildJob

    job = BuildJob(resolve("ncf", "tiny", "int8fp16", "cpu"), None, None, None, None)
    with pytest.raises(ValueError, match="tensorrt INT8 flavour only"):
        _int8_job(job)


# --- the rules check fails on a broken one ----------------------------------------------------------------------


def _conv_input_scale_to_fp32(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with the weight scale of its first Conv back in float32: that DQ then gives FP32 to an FP16
    Conv, a type mismatch a strongly typed network refuses."""
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    producers = {o: n for n in broken.graph.node for o in n.output}
    conv = next(n for n in broken.graph.node if n.op_type == "Conv")
    dq = producers[conv.input[1]]
    inits = {t.name: t for t in broken.graph.initializer}
    scale = inits[dq.input[1]]
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale).astype(np.float32), scale.name))
    return broken


def test_a_scale_of_the_wrong_type_fails_the_check(built):
    broken = _conv_input_scale_to_fp32(built["resnet50"])
    found = tensorrt_rules.check(broken)
    assert [v.rule for v in found] == ["scale-type"], found
    assert "reads FLOAT from DequantizeLinear" in found[0].message and "FLOAT16" in found[0].message


def test_fp16_scales_below_opset_19_fail_the_check(built):
    old = onnx.ModelProto()
    old.CopyFrom(built["ncf"])
    for opset in old.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = 17
    found = {v.rule for v in tensorrt_rules.check(old)}
    assert found == {"scale-type"}


def test_a_quantize_whose_scale_is_not_its_inputs_type_fails():
    """QuantizeLinear-19 takes ``x`` and ``y_scale`` in one type; TensorRT casts a scale only below opset 19."""
    nodes = [
        helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16),
        helper.make_node("QuantizeLinear", ["h", "s", "z"], ["q"], name="q"),
        helper.make_node("DequantizeLinear", ["q", "s16", "z"], ["y"], name="dq"),
    ]
    inits = [
        numpy_helper.from_array(np.array(0.1, np.float32), "s"),
        numpy_helper.from_array(np.array(0.1, np.float16), "s16"),
        numpy_helper.from_array(np.array(0, np.int8), "z"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2])],
        inits,
        value_info=[helper.make_tensor_value_info("h", TensorProto.FLOAT16, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    assert [(v.rule, v.node) for v in tensorrt_rules.check(model)] == [("scale-type", "q")]
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.array(0.1, np.float16), "s"))
    assert tensorrt_rules.check(model) == []


def test_nodes_appended_out_of_order_are_sorted():
    """ONNX Runtime's converter appends its input casts last; ``sort_nodes`` moves them before their users and
    leaves the rest in order."""
    nodes = [
        helper.make_node("Relu", ["xh"], ["a"], name="relu"),
        helper.make_node("Neg", ["a"], ["b"], name="neg"),
        helper.make_node("Cast", ["x"], ["xh"], name="cast", to=TensorProto.FLOAT16),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT16, [2])],
    )
    sort_nodes(graph)
    assert [n.name for n in graph.node] == ["cast", "relu", "neg"]


# --- accuracy ----------------------------------------------------------------------------------------------------


def _outputs(path, feeds, optimize=False) -> dict:
    """``path``'s outputs on ONNX Runtime CPU. Optimisation off for Q/DQ graphs: every Q/DQ rounds as written
    (the exact simulation), and float16 nodes without a CPU kernel (Conv) run in float32 between float16 casts,
    as GPU FP16 kernels accumulate in float32."""
    return run_once(path, feeds, optimize=optimize)


def test_its_outputs_agree_with_fp32_about_as_well_as_int8_and_fp16(built, tmp_path):
    """On tiny ResNet-50 (random weights, 16 samples) the mixed artifact's cosine with FP32 is within 0.02 of
    the INT8 artifact's (FP16's error is far smaller than INT8's), and it keeps most top-1 classes; the same
    graph with its weight scales doubled (a broken artifact) falls far below that bound."""
    spec = model_spec("resnet50")
    feeds = spec.make_feeds("tiny", 16, 5)
    paths = {p: ensure(resolve("resnet50", "tiny", p, "tensorrt")) for p in ("fp32", "fp16", "int8", "int8fp16")}
    ref = _outputs(paths["fp32"], feeds, optimize=True)
    result = {p: compare("classification", ref, _outputs(paths[p], feeds, p == "fp16")) for p in paths if p != "fp32"}
    cos = {p: r["accuracy_cosine"] for p, r in result.items()}
    assert cos["fp16"] > 0.999
    assert cos["int8fp16"] >= cos["int8"] - 0.02 and cos["int8fp16"] > 0.95, cos
    assert result["int8fp16"]["accuracy_value"] >= result["int8"]["accuracy_value"] - 0.25

    broken = onnx.ModelProto()
    broken.CopyFrom(built["resnet50"])
    weights = {n.input[1] for n in broken.graph.node if n.op_type == "Conv"}
    scales = {n.input[1] for n in broken.graph.node if n.op_type == "DequantizeLinear" and n.output[0] in weights}
    for tensor in broken.graph.initializer:
        if tensor.name in scales:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) * np.float16(2), tensor.name))
    onnx.save(broken, str(tmp_path / "broken.onnx"))
    bad = compare("classification", ref, _outputs(tmp_path / "broken.onnx", feeds))["accuracy_cosine"]
    assert bad < cos["int8"] - 0.02, (bad, cos)


# --- the engines that run it --------------------------------------------------------------------------------------


def test_only_gpu_engines_run_it_and_the_default_job_plans_none():
    entry = precisions.get("int8fp16")
    assert entry.quantized and entry.element == "int8" and entry.text
    assert [e for e in ("ort-cpu", "ort-cuda", "ort-trt", "tensorrt") if entry.runs_on(e)] == [
        "ort-cuda",
        "ort-trt",
        "tensorrt",
    ]
    assert not entry.runs_on("ort:CPUExecutionProvider") and entry.runs_on("ort:TensorrtExecutionProvider")
    # The default job (ort-cpu) plans exactly the precisions it always did, none unsupported.
    default = RunConfig(models=("ncf",), batch_sizes={"ncf": (1,)}, size="tiny")
    assert default.precisions == ("fp32", "fp16", "int8")
    work = plan(default, availability=lambda engine: None)
    assert [c.precision for c in work.cells] == ["fp32", "fp16", "int8"] and not work.unsupported
    # Named outright on an engine that cannot run it: an unsupported cell with the reason.
    named = RunConfig(models=("ncf",), batch_sizes={"ncf": (1,)}, size="tiny", precisions=("fp32", "int8fp16"))
    work = plan(named, availability=lambda engine: None)
    runners = "tensorrt, ort-trt, ort-cuda, ort:TensorrtExecutionProvider"
    expected = f"ort-cpu: does not run int8fp16, which runs on {runners} only"
    assert work.unsupported == {"ncf/tiny/ort-cpu/int8fp16/b1": expected}
    # A GPU engine's run plans it, from the tensorrt INT8 flavour.
    gpu = RunConfig(models=("ncf",), batch_sizes={"ncf": (1,)}, size="tiny", engines=("tensorrt",))
    assert gpu.precisions == precisions.NAMES
    cells = plan(gpu, availability=lambda engine: None).cells
    assert [c.artifact.name for c in cells if c.precision == "int8fp16"] == ["int8fp16-tensorrt"]
    # Both kinds by default: each precision goes to the engines that run it, with no row of noise.
    both = RunConfig(models=("ncf",), batch_sizes={"ncf": (1,)}, size="tiny", engines=("ort-cpu", "tensorrt"))
    work = plan(both, availability=lambda engine: None)
    assert sorted((c.engine, c.precision) for c in work.cells if c.precision == "int8fp16") == [
        ("tensorrt", "int8fp16")
    ]
    assert len(work.cells) == 3 + 4 and not work.unsupported


def test_the_command_line_default_and_all_follow_the_engines():
    from cli.options import select
    from cli.parser import build_parser

    parser = build_parser()
    for extra in ([], ["--precisions", "all"]):
        args = parser.parse_args(["run", "--models", "ncf", "--engines", "ort-cpu", *extra])
        assert select(args).precisions == ("fp32", "fp16", "int8")
    args = parser.parse_args(["run", "--models", "ncf", "--engines", "ort-cpu", "--precisions", "int8fp16"])
    assert select(args).precisions == ("int8fp16",)


def test_its_roof_is_the_int8_gemms():
    roofs = Roofs({"fp32": 1e12, "fp16": 2e12, "int8": 4e12}, 1e11, "given")
    assert roofs.peak("int8fp16") == 4e12 and roofs.attainable("int8fp16", 100.0) == 4e12
    assert roofs.bound("int8fp16", 1.0) == "memory"
    assert Roofs({"fp32": 1e12}, None, "given").peak("int8fp16") is None


def test_every_graph_of_the_artifact_is_sorted(built):
    """The ONNX checker (which wants every graph sorted) accepts it."""
    model = built["resnet50"]
    onnx.checker.check_model(model)
    assert all(g.node for g in all_graphs(model.graph))
