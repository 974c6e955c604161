"""Terminal tables the commands print (`boneseg labels`, `boneseg report`): the library
returns the numbers, these lay them out for a terminal."""
from __future__ import annotations


def source_table(total: dict) -> str:
    """The effort per proposal source, side by side (the stage's output and the report)."""
    head = f"{'start from':<11} {'cases':>5} {'bone Dice':>9} {'on kidney':>9} {'on vessel':>9} " \
           f"{'on liver':>8} {'voxels':>9} {'regions':>8} {'slices':>6}"
    lines = [head]
    for src, t in total.get("sources", {}).items():
        lines.append(f"{src:<11} {t['cases']:5d} {t['bone_dice']:9.4f} {t['on_kidney']:9.1%} "
                     f"{t['on_vessel']:9.1%} {t['on_liver']:8.1%} {t['voxels']:9d} {t['components']:8d} "
                     f"{t['slices']:6d}")
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    head = (f"{'case':<10} {'cohort':<8} {'source':<20} {'thr':>6} {'fill':>6} {'final':>6} {'missed':>7} "
            f"{'bright':>7} {'edited':>7}")
    lines = [head]
    fmt = lambda v: f"{v:6.3f}" if isinstance(v, float) else f"{'-':>6}"  # noqa: E731
    for r in rows:
        lines.append(
            f"{r['case']:<10} {r['cohort']:<8} {r['label_source']:<20} {fmt(r.get('dice_threshold'))} "
            f"{fmt(r.get('dice_filled'))} {fmt(r.get('dice_final'))} "
            f"{r.get('bone_missed_by_threshold', float('nan')):7.1%} "
            f"{r.get('non_bone_caught_by_threshold', 0):7d} {r['corrected_voxels']:7d}"
        )
    return "\n".join(lines)
