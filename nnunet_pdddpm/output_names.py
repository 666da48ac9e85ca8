"""Names of the files PD-DDPM writes, shared by the writers (inference, experiments) and the reader (evaluation).

The uncertainty maps live in their own folder so that nnU-Net's evaluation of the output folder only sees
segmentations: ``<output>/uncertainty/CASE_uncertainty<file_ending>``, beside the run's per-case scores
``<output>/uncertainty/case_scores.json``.
"""
UNCERTAINTY_FOLDER = "uncertainty"
UNCERTAINTY_SUFFIX = "_uncertainty"
CASE_SCORES_FILE = "case_scores.json"
