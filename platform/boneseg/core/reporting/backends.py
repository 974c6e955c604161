"""The report's sections on how the best variant's fold models run on new CTs, from their
manifest (results/model/boneseg.json):
- "Postprocessing": the rule chosen by cross-validation, with each class's CV Dice with and
  without each candidate;
- "Segmentation backends": the ONNX export's fp32 parity against PyTorch per fold, the int8
  model's bone Dice against fp32 per fold, and whether int8 is offered, or why not.
The manifest is read from disk, so every value is checked before it is shown."""
from __future__ import annotations

import html
import math
from pathlib import Path

from boneseg.core.inference.backend import int8_verdict, read_manifest
from boneseg.core.inference.postprocess import check_rule, describe
from boneseg.errors import DataError


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def backend_summary(model_dir: str | Path, manifest: dict | None = None) -> dict:
    """{"exported": bool, "why"?: str, "int8_offered", "int8_why", "folds": [...]} from the
    models' manifest (read from `model_dir` unless given); every number is checked to be a
    finite number (the manifest is read from disk, so it is not trusted)."""
    onnx = (read_manifest(Path(model_dir)) if manifest is None else manifest).get("onnx")
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
               f"<b>int8 is not offered</b>: {html.escape(s['int8_why'])}. On the CPU, segment runs fp32 "
               "ONNX Runtime for slices of 256 px or more, PyTorch below.")
    return (f"<p>The best variant's fold models were exported to ONNX (opset {html.escape(str(s['opset']))}, "
            f"checked with ONNX Runtime {html.escape(s['onnxruntime'])}). fp32 parity: the largest logit "
            "difference from PyTorch and the share of pixels whose label differs, on one validation case. "
            "int8: bone Dice on the fold's validation cases, calibrated on its training cases only.</p>"
            f"<p>{verdict}</p><table><tr><th>fold</th><th>fp32 max |logit diff|</th><th>labels differing</th>"
            f"<th>fp32 bone Dice</th><th>int8 bone Dice</th><th>int8 &minus; fp32</th></tr>{rows}</table>")


def postprocess_summary(model_dir: str | Path, manifest: dict | None = None) -> dict:
    """{"chosen": bool, "description", "cases", "bone_dice_before", "bone_dice_after",
    "per_class": {name: {candidate: CV Dice, "kept": candidate | None}}} or {"chosen": False, "why"}."""
    pp = (read_manifest(Path(model_dir)) if manifest is None else manifest).get("postprocess")
    if not isinstance(pp, dict) or "rule" not in pp:
        return {"chosen": False, "why": "the fold models carry no postprocessing choice "
                                        "(infer.postprocess was off, or they come from an older sweep)"}
    try:
        rule = check_rule(pp["rule"], "boneseg.json")
    except DataError as exc:
        return {"chosen": False, "why": str(exc)}
    per_class = {}
    for name, row in (pp.get("per_class") if isinstance(pp.get("per_class"), dict) else {}).items():
        if isinstance(row, dict):
            per_class[str(name)] = {**{str(k): _num(v) for k, v in row.items() if k != "kept"},
                                    "kept": str(row["kept"]) if row.get("kept") else None}
    return {"chosen": True, "description": describe(rule),
            "cases": int(pp["cases"]) if isinstance(pp.get("cases"), int) else None,
            "bone_dice_before": _num(pp.get("bone_dice_before")),
            "bone_dice_after": _num(pp.get("bone_dice_after")),
            "per_class": per_class}


def postprocess_html(s: dict) -> str:
    if not s["chosen"]:
        return f"<p>No postprocessing: {html.escape(s['why'])}.</p>"
    names = sorted({k for row in s["per_class"].values() for k in row if k != "kept"},
                   key=lambda k: (k != "none", k))
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    rows = "".join(f"<tr><td>{html.escape(c)}</td>"
                   + "".join(f"<td>{_f(row.get(n), '.4f')}</td>" for n in names)
                   + f"<td>{html.escape(row['kept'] or 'none')}</td></tr>"
                   for c, row in s["per_class"].items())
    return (f"<p>Rule applied by <code>boneseg segment</code> (<code>--no-postprocess</code> turns it off): "
            f"<b>{html.escape(s['description'])}</b>. Cross-validated bone Dice over {s['cases']} "
            f"out-of-fold validation cases: {_f(s['bone_dice_before'], '.4f')} without, "
            f"{_f(s['bone_dice_after'], '.4f')} with it. A class keeps a rule only if its CV mean Dice "
            "rises.</p>"
            f"<table><tr><th>class</th>{head}<th>kept</th></tr>{rows}</table>")


def model_summary(model_dir: str | Path) -> dict:
    """report.json's "postprocess" and "backends" keys, from one read of the manifest."""
    manifest = read_manifest(Path(model_dir))
    return {"postprocess": postprocess_summary(model_dir, manifest),
            "backends": backend_summary(model_dir, manifest)}


def model_html(m: dict) -> str:
    return (f"<h2>Postprocessing</h2>\n{postprocess_html(m['postprocess'])}\n"
            f"<h2>Segmentation backends</h2>\n{backends_html(m['backends'])}\n")
