"""The project's words, each defined once and typed: cohorts, source layouts, proposal
sources and the study's four variants. Unknown values are refused by name (`parse`).
docs/glossary.md says what each word means."""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from boneseg.errors import DataError


class Cohort(StrEnum):
    """The kind of CT a case is: abdominal CTs are labelled, trained and scored; thigh CTs
    give the threshold femur masks that the V-Net and the encoder pretraining learn from."""

    ABDOMEN = "abdomen"
    THIGH = "thigh"


class Layout(StrEnum):
    """How a lab's CT folder is organised (`boneseg import --layout`, `data.sources`)."""

    DICOM = "dicom"  # DICOM series in any nesting
    NIFTI = "nifti"  # images/ (+ labels/)
    TOTALSEGMENTATOR = "totalsegmentator"  # sXXXX/ct.nii.gz + segmentations/


class ProposalSource(StrEnum):
    """A label map an annotator can start from (`boneseg correct export --proposal`)."""

    THRESHOLD = "threshold"  # HU >= the cohort's level
    FILLED = "filled"  # threshold + component cleaning, closing and marrow fill
    VNET = "vnet"  # the study's V-Net (`boneseg propose`)
    UNET = "unet"  # a trained U-Net (`boneseg assist`)


@dataclass(frozen=True)
class Variant:
    """One of the study's four settings ("environments" in its text)."""

    name: str
    classes: str  # "multi" (bone, kidney, vessel, liver) or "single" (bone only)
    init: str  # the encoder's initialisation: "random" or "pretrained"

    @property
    def pretrained(self) -> bool:
        return self.init == "pretrained"


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("multi-random", "multi", "random"),
    Variant("single-random", "single", "random"),
    Variant("multi-pretrained", "multi", "pretrained"),
    Variant("single-pretrained", "single", "pretrained"),
)}


def parse(kind: type[StrEnum], value: str, where: str) -> StrEnum:
    """`value` as a member of `kind`, or a DataError naming `where` and the known values."""
    try:
        return kind(value)
    except ValueError:
        known = ", ".join(m.value for m in kind)
        name = kind.__name__.lower()
        raise DataError(f"{where}: unknown {name} {value!r}; expected one of {known}.") from None
