"""Published NSD figures, for context beside a run's own table (never mixed with it).

Source: Table 1 of MindEye2 (Scotti et al., ICML 2024). Average over NSD subjects 1, 2, 5 and 7. Values are
as published: two-way identification and retrieval in %, EffNet-B and SwAV as correlation
distances (lower is better). Retrieval is 300-way top-1 (MindEye2's 40-hour figures are
from its memory-bank table).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PublishedRow:
    model: str
    source: str
    values: dict[str, float]  # keys as evaluation.METRIC_COLUMNS; percentages already in %


_COLUMNS = ("pixcorr", "ssim", "alexnet2", "alexnet5", "inception", "clip", "effnet", "swav", "image_retrieval",
            "brain_retrieval")


def _row(model: str, source: str, *values: float) -> PublishedRow:
    return PublishedRow(model, source, dict(zip(_COLUMNS, values, strict=True)))


PUBLISHED_NSD = (
    _row("MindEye2, 40 h per subject", "MindEye2 (ICML 2024), Table 1",
         .322, .431, 96.1, 98.6, 95.4, 93.0, .619, .344, 98.8, 98.3),
    _row("MindEye2, 1 h of the new subject", "MindEye2 (ICML 2024), Table 1",
         .195, .419, 84.2, 90.6, 81.2, 79.2, .810, .468, 79.0, 57.4),
    _row("MindEye1", "as re-reported in MindEye2 (ICML 2024), Table 1",
         .319, .360, 92.8, 96.9, 94.6, 93.3, .648, .367, 93.6, 90.1),
)
PUBLISHED_CAVEAT = ("Published on NSD (real fMRI, average of subjects 1, 2, 5, 7). Not comparable with "
                    "simulated-world numbers, which come from a synthetic testbed with small models.")

__all__ = ["PUBLISHED_CAVEAT", "PUBLISHED_NSD", "PublishedRow"]
