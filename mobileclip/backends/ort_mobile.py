"""The ONNX Runtime Mobile backend: ``image.ort`` / ``text.ort`` plus the reduced-operator config.

An app that ships ONNX Runtime's *mobile* (minimal) build loads ORT-format models only, and the
build itself is cut down to the operators and types those models use. This backend exports the
ONNX towers as the ``onnx`` backend does (same precisions, same quantization), then converts
them with ONNX Runtime's own tool (``onnxruntime.tools.convert_onnx_models_to_ort``):

* optimization style **Fixed** at level *all*, for ``arm`` (phones; ONNX Runtime then allows int8
  QDQ fusions, and leaves out the x86-only NCHWc layout): the saved graph is what runs, on
  any ORT build;
* ``required_operators_and_types.config`` — the operators *and* types the two towers need: pass it
  to ORT's ``build.py --minimal_build --include_ops_by_config`` for the smallest library.

The bundle keeps each tower's ``.onnx`` beside its ``.ort`` (entry key ``onnx``; listed and
checksummed like every file), so desktop tools read the same model. The runner loads the
``.ort`` file in ONNX Runtime, exactly like an ``onnx`` artifact, with the same checks.
"""
from __future__ import annotations

import contextlib
import io
import logging
import shutil
from pathlib import Path
from typing import Optional

from .base import Backend, ExportOptions, int8_refusal_reason
from .bundle import BundleError
from .onnx import OrtRunner, check_options, export_onnx, read_io_session

CONFIG = "required_operators_and_types.config"
TARGET = "arm"     # phones: int8 QDQ kept as int8 where ARM kernels exist; no x86 NCHWc layout


def export_ort(src, out_dir: Path, options: ExportOptions) -> dict:
    """Both towers as ONNX (as the onnx backend writes them), then as ORT format with the operator config."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    info = export_onnx(src, out_dir, options)
    work = out_dir / ".ort-convert"   # the tool converts every .onnx in a folder: give it exactly ours
    work.mkdir()
    try:
        for t in ("image", "text"):
            shutil.copy(out_dir / info[t]["file"], work / f"{t}.onnx")
        log = io.StringIO()
        logging.getLogger("ort_format_model").setLevel(logging.WARNING)   # its INFO line names a temporary path
        try:
            with contextlib.redirect_stdout(log):
                convert_onnx_models_to_ort(work, output_dir=work / "out", optimization_styles=[OptimizationStyle.Fixed],
                                           target_platform=TARGET, enable_type_reduction=True)
        except Exception as e:   # ORT raises its own types; the log says which model and why
            raise BundleError(f"ONNX Runtime could not convert the towers to ORT format: {e} "
                              f"({' '.join(log.getvalue().split()[-30:])})") from e
        for t in ("image", "text"):
            shutil.move(work / "out" / f"{t}.ort", out_dir / f"{t}.ort")
        # The tool's header names the models by their temporary paths: name them by the bundle's files.
        lines = (work / "out" / CONFIG).read_text().splitlines()
        lines = [f"# - {Path(ln[4:]).name}" if ln.startswith("# - ") else ln for ln in lines]
        (out_dir / CONFIG).write_text("\n".join(lines) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    import onnxruntime

    for t in ("image", "text"):
        info[t].update(onnx=info[t]["file"], file=f"{t}.ort", backend="ort", ort_config=CONFIG,
                       ort_format={"optimization_style": "Fixed", "optimization_level": "all",
                                   "target_platform": TARGET, "onnxruntime": onnxruntime.__version__})
    return info


def _unavailable() -> Optional[str]:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "onnxruntime is not installed: pip install 'mobileclip-toolkit[onnx]'"
    return None


def _prepare_export() -> None:
    from .base import BackendUnavailable

    why = _unavailable()
    try:
        import onnxruntime.tools.convert_onnx_models_to_ort  # noqa: F401
    except ImportError as e:
        why = why or f"onnxruntime's ORT-format converter cannot be imported ({e})"
    if why:
        raise BackendUnavailable(f"cannot export ORT-format bundles: {why}")


BACKEND = Backend(
    label="ORT Mobile", name="ort", precisions=("fp32", "fp16", "int8"), runtime="onnxruntime-mobile", extra="onnx",
    io="host numpy arrays in and out",
    summary="ORT-format files (+ reduced-operator config) for ONNX Runtime Mobile builds on Android/iOS",
    export=export_ort, runner=OrtRunner, unavailable=_unavailable, check_options=check_options,
    prepare_export=_prepare_export, read_io=read_io_session,
    int8_refused={"static": int8_refusal_reason(97.6, 97.3, 89.5),   # real-data: exact GELU (onnx.py)
                  "dynamic": int8_refusal_reason(99.2, 99.4, 97.0)})
