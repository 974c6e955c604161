"""The report's "Segmentation backends" section: what the sweep's ONNX export of the best
variant's fold models recorded in their manifest (results/model/boneseg.json): fp32 parity
against PyTorch per fold, the int8 model's bone Dice against fp32 per fold, and whether
int8 is offered, or why not."""
from __future__ import annotations

import html
import math
from pathlib import Path

from boneseg.core.inference.backend import int8_verdict, read_manifest


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def backend_summary(model_dir: str | Path) -> dict:
    """{"exported": bool, "why"?: str, "int8_offered", "int8_why", "folds": [...]} from the
    models' manifest; every number is checked to be a finite number (the manifest is read
    from disk, so it is not trusted)."""
    onnx = read_manifest(Path(model_dir)).get("onnx")
    if not isinstance(onnx, dict):
        return {"exported": False, "why": "the fold models carry no ONNX export (infer.export was off, or "
                                          "they come from an older sweep)"}
    if onnx.get("error"):
        return {"exported": False, "why": f"the ONNX export failed: {str(onnx['error'])[:300]}"}
    offered, why = int8_verdict({"onnx": onnx})
    int8 = onnx.get("int8") if isinstance(onnx.get("int8"), dict) else {}
    per_fold = int8.get("folds") if isinstance(int8.get("folds"), dict) else {}
    parity = onnx.get("parity") if isinstance(onnx.get("parity"), dict) else {}
    folds = []
    for k in sorted(set(per_fold) | set(parity), key=lambda s: (len(str(s)), str(s))):
        f = per_fold.get(k) if isinstance(per_fold.get(k), dict) else {}
        p = parity.get(k) if isinstance(parity.get(k), dict) else {}
        folds.append({"fold": str(k), "max_abs_logit_diff": _num(p.get("max_abs_logit_diff")),
                      "labels_differing": _num(p.get("labels_differing")),
                      "fp32_bone_dice": _num(f.get("fp32_bone_dice")),
                      "int8_bone_dice": _num(f.get("int8_bone_dice")), "diff": _num(f.get("diff"))})
    return {"exported": True, "opset": onnx.get("opset"), "onnxruntime": str(onnx.get("onnxruntime", "")),
            "int8_offered": offered, "int8_why": why,
            "mean_bone_dice_loss": _num(int8.get("mean_bone_dice_loss")),
            "max_loss": _num(int8.get("max_loss")), "folds": folds}


def _f(v, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def backends_html(s: dict) -> str:
    if not s["exported"]:
        return f"<p>Only PyTorch: {html.escape(s['why'])}.</p>"
    rows = "".join(
        f"<tr><td>fold {html.escape(r['fold'])}</td><td>{_f(r['max_abs_logit_diff'], '.1e')}</td>"
        f"<td>{_f(r['labels_differing'], '.2%')}</td><td>{_f(r['fp32_bone_dice'], '.4f')}</td>"
        f"<td>{_f(r['int8_bone_dice'], '.4f')}</td><td>{_f(r['diff'], '+.5f')}</td></tr>" for r in s["folds"])
    verdict = ("<b>int8 is offered</b>: <code>boneseg segment</code> uses it by default on the CPU "
               f"(fold-mean bone Dice loss {_f(s['mean_bone_dice_loss'], '.5f')}, allowed "
               f"{_f(s['max_loss'], 'g')})." if s["int8_offered"] else
               f"<b>int8 is not offered</b>: {html.escape(s['int8_why'])}. Segment runs fp32 ONNX Runtime "
               "on the CPU.")
    return (f"<p>The best variant's fold models were exported to ONNX (opset {html.escape(str(s['opset']))}, "
            f"checked with ONNX Runtime {html.escape(s['onnxruntime'])}). fp32 parity: the largest logit "
            "difference from PyTorch and the share of pixels whose label differs, on one validation case. "
            "int8: bone Dice on the fold's validation cases, calibrated on its training cases only.</p>"
            f"<p>{verdict}</p><table><tr><th>fold</th><th>fp32 max |logit diff|</th><th>labels differing</th>"
            f"<th>fp32 bone Dice</th><th>int8 bone Dice</th><th>int8 &minus; fp32</th></tr>{rows}</table>")
