"""`fm21 generate`: any-to-any generation with a trained run's 4M and tokenizers.

- :mod:`fm21.generate.run`: the trained run (4M checkpoint, tokenizers, text tokenizer).
- :mod:`fm21.generate.inputs`: conditions given as files or text -> mod_dict entries.
- :mod:`fm21.generate.outputs`: generated tokens -> PNG / JSON / text, and the grid.
- :mod:`fm21.generate.driver`: one sample, a folder of images, rows of the tokens store.
- :mod:`fm21.generate.page`: the local generation page (FastAPI).

How a modality is read and written is looked up from its registry spec (``kind`` and
``label_kind``), never from its name.
"""
