"""Checks of a written Core ML package against what the manifest says: its specification (inputs, outputs, shapes,
ops, deployment target) and its weights (every blob read back)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from .coreml_format import COMPRESSED_OPS, DEPLOYMENT_TARGET, INPUT_SCALE, SPECIFICATION_VERSION, require_coremltools


def _main_ops(spec) -> list:
    func = spec.mlProgram.functions["main"]
    block = func.block_specializations[func.opset]
    ops = []

    def walk(b):
        for op in b.operations:
            ops.append(op)
            for inner in op.blocks:
                walk(inner)

    walk(block)
    return ops


def _tensor_dims(value_type) -> Optional[list]:
    """MIL tensor dims: ints, or None for an unknown (flexible) dim."""
    if value_type.WhichOneof("type") != "tensorType":
        return None
    return [d.constant.size if d.WhichOneof("dimension") == "constant" else None
            for d in value_type.tensorType.dimensions]


def _dims_match(got: list, want: list) -> bool:
    return len(got) == len(want) and all((g is None) if isinstance(w, str) else (g == w) for g, w in zip(got, want))


def check_spec(path: Path, expected: dict) -> list:
    """Mismatches between the ``.mlpackage`` at ``path`` and its artifact entry; ``[]`` = ok.

    Reads the spec only (works on Linux): model type and specification version, input and
    output names, the image input (RGB, size), token inputs (dtype, context length, batch
    range), output dtype and shape ``[B, D]`` in the ML program, the compression ops, the
    compute precision, and the normalization recorded in the metadata.
    """
    ct = require_coremltools()
    from coremltools.proto import FeatureTypes_pb2

    path = Path(path)
    if not (path / "Manifest.json").is_file():
        return [f"{path} is not an .mlpackage (no Manifest.json)"]
    try:
        spec = ct.utils.load_spec(str(path))
    except Exception as e:  # noqa: BLE001 - an unreadable package is reported as a mismatch
        return [f"{path}: cannot read the Core ML spec: {type(e).__name__}: {e}"]
    misses = []
    if spec.WhichOneof("Type") != "mlProgram":
        return [f"model type is {spec.WhichOneof('Type')!r}, expected 'mlProgram'"]
    want_version = expected.get("specification_version", SPECIFICATION_VERSION)
    if spec.specificationVersion != want_version:
        misses.append(f"specification version {spec.specificationVersion} != {want_version} "
                      f"({expected.get('minimum_deployment_target', DEPLOYMENT_TARGET)})")
    func = spec.mlProgram.functions["main"]
    mil_inputs = {i.name: _tensor_dims(i.type) for i in func.inputs}
    ops = _main_ops(spec)
    mil_outputs = {o.name: o.type for op in ops for o in op.outputs}

    got_in = [i.name for i in spec.description.input]
    want_in = [i["name"] for i in expected["inputs"]]
    if got_in != want_in:
        misses.append(f"inputs {got_in} != {want_in}")
    features = {i.name: i for i in spec.description.input}
    for want in expected["inputs"]:
        feat = features.get(want["name"])
        if feat is None:
            continue
        name, shape = want["name"], want["shape"]
        kind = feat.type.WhichOneof("Type")
        if want.get("type") == "image":
            if kind != "imageType":
                misses.append(f"input {name!r} is {kind}, expected an image")
                continue
            img = feat.type.imageType
            space = FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(img.colorSpace)
            if space != want.get("color_layout", "RGB"):
                misses.append(f"input {name!r} color space {space} != {want.get('color_layout', 'RGB')}")
            if (img.height, img.width) != (shape[-2], shape[-1]):
                misses.append(f"input {name!r} size {img.height}x{img.width} != {shape[-2]}x{shape[-1]}")
        else:
            if kind != "multiArrayType":
                misses.append(f"input {name!r} is {kind}, expected a multi-array")
                continue
            arr = feat.type.multiArrayType
            dtype = FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(arr.dataType)
            if dtype != want["dtype"].upper():
                misses.append(f"input {name!r} dtype {dtype} != {want['dtype'].upper()}")
            ranges = [(r.lowerBound, r.upperBound) for r in arr.shapeRange.sizeRanges]
            for axis, dim in enumerate(shape):
                if isinstance(dim, int):
                    got_dim = ranges[axis] if ranges else (arr.shape[axis],) * 2 if axis < len(arr.shape) else None
                    if got_dim != (dim, dim):
                        misses.append(f"input {name!r} axis {axis} is {got_dim}, expected fixed {dim}")
            if "batch_range" in want:
                want_range = tuple(want["batch_range"])
                if not ranges or ranges[0] != want_range:
                    misses.append(f"input {name!r} batch range {ranges[0] if ranges else 'fixed'} != {want_range}")
        got_dims = mil_inputs.get(name)
        want_dims = [None if isinstance(d, str) else d for d in shape]
        if got_dims is not None and got_dims != want_dims:
            misses.append(f"input {name!r} program shape {got_dims} != {want_dims}")

    got_out = [o.name for o in spec.description.output]
    want_out = [o["name"] for o in expected["outputs"]]
    if got_out != want_out:
        misses.append(f"outputs {got_out} != {want_out}")
    for want in expected["outputs"]:
        feat = next((o for o in spec.description.output if o.name == want["name"]), None)
        if feat is None:
            continue
        dtype = FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(feat.type.multiArrayType.dataType)
        if dtype != want["dtype"].upper():
            misses.append(f"output {want['name']!r} dtype {dtype} != {want['dtype'].upper()}")
        value_type = mil_outputs.get(want["name"])
        dims = _tensor_dims(value_type) if value_type is not None else None
        if dims is None or not _dims_match(dims, want["shape"]):
            misses.append(f"output {want['name']!r} program shape {dims} != {want['shape']}")

    op_types = {op.type for op in ops}
    compress = expected.get("compression", "none")
    constexpr = sorted(t for t in op_types if t.startswith("constexpr_"))
    if compress == "none" and constexpr:
        misses.append(f"uncompressed model holds compressed weights ({constexpr})")
    elif compress != "none":
        want_op = COMPRESSED_OPS["int8" if compress == "int8" else "palettize"]
        if want_op not in op_types:
            misses.append(f"compression {compress!r}: no {want_op} op in the program (found {constexpr or 'none'})")
    fp16_ops = any(o.type.WhichOneof("type") == "tensorType" and o.type.tensorType.dataType == _mil_fp16()
                   for op in ops for o in op.outputs if op.type != "const")
    precision = expected.get("precision")
    if precision == "fp16" and not fp16_ops:
        misses.append("precision fp16, but no op computes in float16")
    if precision == "fp32" and fp16_ops:
        misses.append("precision fp32, but some ops compute in float16")

    meta = dict(spec.description.metadata.userDefined)
    if "normalization" in expected:
        norm = expected["normalization"]
        got = {k: meta.get(f"mobileclip.{k}") for k in ("mean", "std", "input_scale")}
        want = {"mean": ",".join(repr(float(v)) for v in norm["mean"]),
                "std": ",".join(repr(float(v)) for v in norm["std"]),
                "input_scale": repr(float(expected.get("input_scale", INPUT_SCALE)))}
        if got != want:
            misses.append(f"normalization metadata {got} != {want}")
    return misses + weight_misses(path, spec)


_BLOB_READERS = {"FLOAT16": "read_fp16_data", "FLOAT32": "read_float_data", "INT8": "read_int8_data",
                 "UINT8": "read_uint8_data", "INT16": "read_int16_data", "UINT16": "read_uint16_data",
                 "INT32": "read_int32_data", "UINT32": "read_uint32_data", "INT4": "read_int4_data",
                 "UINT4": "read_uint4_data", "UINT2": "read_uint2_data", "UINT1": "read_uint1_data",
                 "UINT3": "read_uint3_data", "UINT6": "read_uint6_data"}


def _values(block):
    for op in block.operations:
        yield from op.attributes.values()
        for inner in op.blocks:
            yield from _values(inner)


def weight_misses(path: Path, spec) -> list:
    """Every weight blob the ML program refers to, read from its weight file by coremltools' own blob reader (no
    macOS needed): a file cut short, a blob at an offset past its end or holding fewer values than the tensor's
    shape is a miss. Checksums say the bundle's files are those listed; this says the package can be loaded."""
    from coremltools.libmilstoragepython import _BlobStorageReader
    from coremltools.proto import MIL_pb2

    names = {v: k for k, v in MIL_pb2.DataType.items()}
    readers, count = {}, 0
    for func in spec.mlProgram.functions.values():
        for block in func.block_specializations.values():
            for v in _values(block):
                if v.WhichOneof("value") != "blobFileValue":
                    continue
                blob, dtype = v.blobFileValue, names.get(v.type.tensorType.dataType, "?")
                rel = blob.fileName.replace("@model_path/", "", 1)
                file = path / "Data" / "com.apple.CoreML" / rel
                where = f"the weight at offset {blob.offset} of {rel}"
                if not file.is_file():
                    return [f"{where}: the file is missing"]
                try:
                    reader = readers.setdefault(rel, _BlobStorageReader(str(file)))
                    data = getattr(reader, _BLOB_READERS[dtype])(blob.offset)
                except KeyError:
                    return [f"{where} has data type {dtype}, which this check does not know"]
                except Exception as e:   # noqa: BLE001 - the reader raises ValueError/RuntimeError on a bad file
                    return [f"{where} cannot be read ({type(e).__name__}: {e}): the package is damaged"]
                dims = [d.constant.size for d in v.type.tensorType.dimensions]
                if dtype in ("FLOAT16", "FLOAT32", "INT8", "UINT8", "INT16", "UINT16", "INT32", "UINT32") and \
                        all(d.WhichOneof("dimension") == "constant" for d in v.type.tensorType.dimensions) and \
                        len(data) != int(np.prod(dims)):
                    return [f"{where} holds {len(data)} values, its tensor {dims} needs {int(np.prod(dims))}"]
                count += 1
    return []


def _mil_fp16() -> int:
    from coremltools.proto import MIL_pb2

    return MIL_pb2.DataType.Value("FLOAT16")
