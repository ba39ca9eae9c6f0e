"""Pseudo-labelling: specialists turn webdataset shards into the columns of labels.lance.

``fm21.pseudolabel.specialists`` holds one plain class per specialist (the contract is
``specialists.base.Specialist``; ``specialists.SPECIALISTS`` maps a registry
``specialist`` name to its class). ``fm21.pseudolabel.job`` runs the enabled ones over
the shards as Ray Data actor pools and writes their columns, keyed by sample key.
"""
