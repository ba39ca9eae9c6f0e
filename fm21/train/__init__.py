"""4M training: model (``model``), masking (``masking``), checkpoints (``checkpoint``),
the Lance loader (``loader``) and the training loop (``loop``).

Kept light on purpose: importing ``fm21.train`` pulls in none of its submodules, so the
model code can be used without Ray, Prefect or Lance installed.
"""
