"""`boneseg synth`: a deterministic synthetic CT cohort (abdominal + thigh CTs).

Anatomy is drawn analytically in patient mm coordinates (RAS+: x to the patient's
right, y anterior, z superior) as a tissue map, then turned into Hounsfield units with
per-patient contrast phase, texture, partial-volume blur and low-dose noise. The truth
label map is the tissue map folded onto the label ids of docs/architecture.md.

Everything random comes from one `numpy.random.Generator` seeded by (seed, cohort,
index), and files are written with `nifti.to_nifti_bytes` (gzip mtime=0), so the same
seed and settings give byte-identical files.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from boneseg.core.config import SynthConfig
from boneseg.core.imaging.nifti import Volume, save_volume
from boneseg.core.io import atomic_write_text

# tissue id -> (label id, name)
AIR, FAT, MUSCLE, SOFT, CORTEX, CANCELLOUS, MARROW, K_CORTEX, K_MEDULLA, LIVER, \
    ARTERY, VEIN, DISC, CSF, GAS, DENSE = range(16)
TISSUE_LABEL = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 4, 3, 3, 0, 0, 0, 1], dtype=np.uint8)
PHASES = ("none", "arterial", "portal-venous")


@dataclass
class Case:
    case_id: str
    cohort: str  # "abdomen" | "thigh"
    ct: Volume
    truth: Volume
    meta: dict


# ---------------------------------------------------------------- shape helpers
def ellipse(P, cx, cy, a, b, angle=0.0):
    """Boolean mask of an ellipse with semi-axes (a, b) rotated by `angle` radians, on the
    plane P = (X, Y) of voxel-centre coordinates (mm)."""
    X, Y = P
    c, s = np.cos(angle), np.sin(angle)
    u = (X - cx) * c + (Y - cy) * s
    v = -(X - cx) * s + (Y - cy) * c
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def shelled(tissue, P, oval, shell, inner, outer=CORTEX):
    """Paint a bone: cortical shell of thickness `shell` mm around an `inner` core; `oval`
    is (cx, cy, a, b) or (cx, cy, a, b, angle), as `ellipse` takes them."""
    cx, cy, a, b, *rot = oval
    angle = rot[0] if rot else 0.0
    tissue[ellipse(P, cx, cy, a, b, angle)] = outer
    if a > shell and b > shell:
        tissue[ellipse(P, cx, cy, a - shell, b - shell, angle)] = inner


def _grid(rng, matrix, fov_mm, slices):
    """Voxel-centre coordinates (mm) of one patient, with random rotation and shift."""
    spacing = fov_mm / matrix
    n_z = max(4, int(round(slices * rng.uniform(0.8, 1.2))))
    dz = float(np.round(rng.uniform(2.5, 5.0), 2))
    coords = (np.arange(matrix) - (matrix - 1) / 2) * spacing
    xx, yy = np.meshgrid(coords, coords, indexing="ij")  # (X, Y), axis 0 = x
    angle = np.deg2rad(rng.uniform(-8, 8))
    shift = rng.uniform(-0.04, 0.04, size=2) * fov_mm
    c, s = np.cos(angle), np.sin(angle)
    X = c * (xx - shift[0]) + s * (yy - shift[1])
    Y = -s * (xx - shift[0]) + c * (yy - shift[1])
    affine = np.diag([spacing, spacing, dz, 1.0])
    affine[:3, 3] = [coords[0], coords[0], -dz * (n_z - 1) / 2]
    return X, Y, n_z, affine


# ---------------------------------------------------------------- abdomen
def _abdomen_tissue(rng, P, n_z):
    """Tissue map (X, Y, Z) of an abdominal CT from the femoral heads to the liver dome."""
    a0, b0 = rng.uniform(135, 170), rng.uniform(100, 125)
    fat = rng.uniform(8, 28)
    sc = rng.uniform(0.9, 1.1)  # skeleton scale
    n_vert = rng.integers(4, 7)
    kid_t = rng.uniform(0.5, 0.6)
    gas = [(rng.uniform(-60, 60), rng.uniform(10, 60), rng.uniform(4, 13), rng.uniform(0.2, 0.6))
           for _ in range(rng.integers(2, 6))]
    patient = (b0, fat, sc, n_vert, kid_t, gas)  # the proportions every slice shares
    tissue = np.zeros(P[0].shape + (n_z,), dtype=np.uint8)
    for k in range(n_z):
        t = (k + 0.5) / n_z  # 0 caudal (pelvis) .. 1 cranial (liver dome)
        tissue[..., k] = _abdomen_slice(P, t, a0 * (1.06 if t < 0.3 else 1.0), patient)
    return tissue


def _abdomen_slice(P, t, a, patient: tuple):
    """One axial slice at height t (0 caudal .. 1 cranial) with body half-width `a`."""
    b, fat, sc, n_vert, kid_t, gas = patient
    sl = np.full(P[0].shape, AIR, dtype=np.uint8)
    sl[ellipse(P, 0, 0, a, b)] = FAT
    sl[ellipse(P, 0, 0, a - fat, b - fat)] = MUSCLE
    inner_a, inner_b = a - fat - 12, b - fat - 12
    sl[ellipse(P, 0, 0, inner_a, inner_b)] = SOFT
    yv, rx, ry = -0.45 * b, 21 * sc, 16 * sc  # vertebral body centre and radii
    for side in (-1, 1):  # paraspinal muscles, psoas
        sl[ellipse(P, side * 24 * sc, yv - ry - 22, 22, 16)] = MUSCLE
        if t < 0.6:
            r = 8 + 14 * (0.6 - t) / 0.6
            sl[ellipse(P, side * (rx + r + 2), yv + 4, r, r * 0.9)] = MUSCLE
    for gx, gy, gr, gt in gas:  # bowel gas: air inside the body, not bone
        if abs(t - gt) < 0.12:
            sl[ellipse(P, gx, gy, gr, gr * 0.8)] = GAS
    if t > 0.45:  # liver on the patient's right (+x), growing cranially
        g = min(1.0, (t - 0.45) / 0.3)
        liver = ellipse(P, 0.35 * a, 0.05 * b, 0.5 * a * g + 1e-3, 0.62 * b * g + 1e-3, 0.3)
        sl[liver & ellipse(P, 0, 0, inner_a - 2, inner_b - 2)] = LIVER
    for side, dt in ((-1, 0.03), (1, 0.0)):  # kidneys with cortex and medulla
        dz = (t - kid_t - dt) / 0.14
        if abs(dz) < 1:
            f = np.sqrt(1 - dz * dz)
            kx, ky = side * (rx + 48), yv + 12
            sl[ellipse(P, kx, ky, 27 * f, 21 * f, side * 0.5)] = K_CORTEX
            if f > 0.4:
                sl[ellipse(P, kx, ky, 15 * f, 11 * f, side * 0.5)] = K_MEDULLA
    _paint_vessels(sl, P, t, yv, ry)
    _paint_spine(sl, P, t, (yv, rx, ry), n_vert)
    if t > 0.62:  # ribs: oval cross-sections inside the body wall
        _paint_ribs(sl, P, t, a - fat - 6, b - fat - 6)
    if t < 0.36:
        _paint_pelvis(sl, P, t, a, yv, sc)
    return sl


def _paint_vessels(sl, P, t, yv, ry):
    ya = yv + ry + 16
    if t > 0.25:
        sl[ellipse(P, -12, ya, 11, 11)] = ARTERY  # aorta, left of midline
        sl[ellipse(P, 20, ya - 2, 13, 10)] = VEIN  # IVC, right
    else:  # below the bifurcation: iliac arteries and veins drift laterally
        off = 14 + (0.25 - t) * 220
        for side in (-1, 1):
            sl[ellipse(P, side * off, ya + 4, 6.5, 6.5)] = ARTERY
            sl[ellipse(P, side * (off - 4), ya - 8, 8, 7)] = VEIN


def _paint_spine(sl, P, t, vertebra, n_vert):
    yv, rx, ry = vertebra  # the vertebral body's centre (y) and radii
    phase = (t * n_vert) % 1.0
    if phase > 0.85:  # intervertebral disc
        sl[ellipse(P, 0, yv, rx, ry)] = DISC
    else:
        shelled(sl, P, (0, yv, rx, ry), 1.8, CANCELLOUS)
    yc = yv - ry - 10  # spinal canal
    arch = ellipse(P, 0, yc, 14, 13) & (P[1] < yv - ry + 3)
    sl[arch] = DENSE
    sl[ellipse(P, 0, yc - 25, 4.5, 14)] = DENSE  # spinous process
    if phase < 0.4:  # transverse processes
        for side in (-1, 1):
            sl[ellipse(P, side * 28, yc + 2, 14, 4.5)] = DENSE
    sl[ellipse(P, 0, yc, 8, 8)] = CSF


def _paint_ribs(sl, P, t, ea, eb):
    n = 3 + int(6 * (t - 0.62) / 0.38)
    for i in range(n):
        for side in (-1, 1):
            phi = np.deg2rad(-150 + 110 * i / max(n - 1, 1))  # posterior -> lateral
            if np.sin(25 * t + 1.7 * i) < -0.55:
                continue  # the rib leaves this slice
            cx, cy = side * ea * abs(np.cos(phi)), eb * np.sin(phi)
            shelled(sl, P, (cx, cy, 7, 5, phi), 1.3, CANCELLOUS)


def _paint_pelvis(sl, P, t, a, yv, sc):
    for side in (-1, 1):
        if t > 0.1:  # iliac wings, widest at the crest
            w = 16 + 40 * (t - 0.1) / 0.26
            shelled(sl, P, (side * 0.5 * a, yv + 18, w * sc, 9 * sc, side * 0.6), 1.6, CANCELLOUS)
        else:  # femoral heads
            shelled(sl, P, (side * 0.55 * a, yv + 40, 22 * sc, 22 * sc), 2.0, CANCELLOUS)
    if t > 0.1:  # sacrum replaces the lumbar body
        shelled(sl, P, (0, yv, 42 * sc, 18 * sc), 1.8, CANCELLOUS)


# ---------------------------------------------------------------- thigh
def _thigh_tissue(rng, P, n_z):
    r = rng.uniform(62, 85)
    fat = rng.uniform(6, 20)
    ro, cort = rng.uniform(12, 16), rng.uniform(3.5, 6.5)
    wob = rng.uniform(0, 2 * np.pi)
    tissue = np.zeros(P[0].shape + (n_z,), dtype=np.uint8)
    for k in range(n_z):
        t = (k + 0.5) / n_z
        sl = np.full(P[0].shape, AIR, dtype=np.uint8)
        for side in (-1, 1):
            cx = side * (r + 8)
            sl[ellipse(P, cx, 0, r, 0.9 * r)] = FAT
            sl[ellipse(P, cx, 0, r - fat, 0.9 * r - fat)] = MUSCLE
            fx, fy = cx - side * 0.12 * r, 0.05 * r + 3 * np.sin(2 * t + wob)
            rr = ro * (1 + 0.08 * np.sin(3 * t + wob))
            sl[ellipse(P, fx, fy - rr, 4, 3)] = CORTEX  # linea aspera
            shelled(sl, P, (fx, fy, rr, rr), cort, MARROW)
            sl[ellipse(P, fx - side * 22, fy + 24, 4, 4)] = ARTERY  # femoral vessels
            sl[ellipse(P, fx - side * 14, fy + 26, 5.5, 4.5)] = VEIN
        tissue[..., k] = sl
    return tissue


# ---------------------------------------------------------------- HU model
def _hu_table(rng, phase):
    """Mean and texture std (HU) of each tissue for one patient."""
    mean = np.zeros(16)
    std = np.zeros(16)
    mean[[AIR, FAT, MUSCLE, SOFT, DISC, CSF, GAS]] = [-1000, rng.uniform(-110, -80), rng.uniform(40, 60),
                                                    rng.uniform(25, 45), 80, 10, -900]
    std[[FAT, MUSCLE, SOFT, DISC]] = [10, 8, 12, 8]
    mean[CORTEX], std[CORTEX] = rng.uniform(900, 1400), 120
    mean[DENSE], std[DENSE] = rng.uniform(450, 750), 80
    mean[CANCELLOUS], std[CANCELLOUS] = rng.uniform(130, 250), 35  # overlaps soft tissue
    mean[MARROW], std[MARROW] = rng.uniform(-80, 40), 15  # fatty / soft-tissue marrow
    enh = {
        "none": dict(artery=40, vein=40, liver=55, kc=30, km=30),
        "arterial": dict(
            artery=rng.uniform(250, 400),
            vein=rng.uniform(60, 90),
            liver=rng.uniform(65, 80),
            kc=rng.uniform(180, 250),
            km=rng.uniform(60, 90),
        ),
        "portal-venous": dict(
            artery=rng.uniform(150, 190),
            vein=rng.uniform(130, 170),
            liver=rng.uniform(100, 120),
            kc=rng.uniform(160, 200),
            km=rng.uniform(120, 150),
        ),
    }[phase]
    mean[[ARTERY, VEIN, LIVER, K_CORTEX, K_MEDULLA]] = [enh["artery"], enh["vein"], enh["liver"],
                                                      enh["kc"], enh["km"]]
    std[[ARTERY, VEIN, LIVER, K_CORTEX, K_MEDULLA]] = [10, 10, 10, 15, 12]
    return mean, std


def render_ct(rng, tissue, spacing_xy, noise_sigma, phase):
    """Tissue map -> int16 HU: per-tissue means, smooth texture, partial volume, noise."""
    mean, std = _hu_table(rng, phase)
    texture = ndimage.gaussian_filter(rng.standard_normal(tissue.shape), sigma=(2, 2, 0.7))
    texture /= max(float(texture.std()), 1e-6)
    hu = mean[tissue] + std[tissue] * texture
    # partial volume: ~0.6 mm in-plane point spread, a little across slices
    hu = ndimage.gaussian_filter(hu, sigma=(0.6 / spacing_xy + 0.3, 0.6 / spacing_xy + 0.3, 0.35))
    hu += noise_sigma * rng.standard_normal(tissue.shape)
    return np.clip(np.round(hu), -1024, 3071).astype(np.int16)


# ---------------------------------------------------------------- cohort
def make_case(cohort: str, index: int, cfg: SynthConfig) -> Case:
    rng = np.random.default_rng([cfg.seed, 0 if cohort == "abdomen" else 1, index])
    fov = rng.uniform(340, 400) if cohort == "abdomen" else rng.uniform(300, 360)
    X, Y, n_z, affine = _grid(rng, cfg.matrix, fov, cfg.slices)
    if cohort == "abdomen":
        phase = PHASES[rng.integers(0, 3)]
        tissue = _abdomen_tissue(rng, (X, Y), n_z)
    else:
        phase = ("none", "arterial")[rng.integers(0, 2)]
        tissue = _thigh_tissue(rng, (X, Y), n_z)
    sigma = rng.uniform(*cfg.noise_hu)
    ct = render_ct(rng, tissue, affine[0, 0], sigma, phase)
    truth = TISSUE_LABEL[tissue]
    if cohort == "thigh":  # the thigh cohort's truth is the femur alone (as in the study)
        truth = (truth == 1).astype(np.uint8)
    case_id = f"{'abd' if cohort == 'abdomen' else 'thigh'}{index:03d}"
    meta = {"case": case_id, "cohort": cohort, "phase": phase, "source": "synthetic",
            "noise_hu": round(float(sigma), 1)}
    return Case(case_id, cohort, Volume(ct, affine), Volume(truth, affine.copy()), meta)


def write_case(case: Case, out_dir: Path) -> Path:
    case_dir = Path(out_dir) / case.cohort / case.case_id
    save_volume(case.ct, case_dir / "ct.nii.gz")
    save_volume(case.truth, case_dir / "truth.nii.gz")
    atomic_write_text(case_dir / "meta.json", json.dumps(case.meta, indent=1, sort_keys=True) + "\n")
    return case_dir


def synthesize(cfg: SynthConfig, out_dir: str | Path, progress: bool = True) -> list[Path]:
    """Write the cohort under out_dir/<cohort>/<case>/ and return the case folders."""
    from tqdm import tqdm

    jobs = [("abdomen", i) for i in range(cfg.abdomen)] + [("thigh", i) for i in range(cfg.thigh)]
    out = []
    for cohort, i in tqdm(jobs, desc="synth", unit="case", disable=not progress):
        out.append(write_case(make_case(cohort, i, cfg), Path(out_dir)))
    return out
