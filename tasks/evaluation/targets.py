"""The DreamBooth targets evaluate_faces holds a subject model to, apart from the
evaluation's code so that the model card (tasks/reporting/model_card.py) can state them without
importing it: subject samples reach this share of the photos' own id_top1 and this much above the
base model's samples; class samples (label 0) stay this close to the base's."""

from __future__ import annotations

ID_CEILING_SHARE, ID_ABOVE_BASE, CLASS_DRIFT = 0.8, 0.4, 0.05
