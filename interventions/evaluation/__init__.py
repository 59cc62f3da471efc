"""Evaluation building blocks, plain functions and torchmetrics (no Lightning module here):
the three-term objective and its metrics (:mod:`.objectives`), steerability (:mod:`.steerability`),
multiple-choice scoring (:mod:`.multiple_choice`), the cached layer sweep (:mod:`.sweep`),
layer rankings and nDCG (:mod:`.ranking`) and steered generation (:mod:`.generation`)."""
