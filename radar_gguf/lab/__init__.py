"""The measurement lab: quality of Radar against dense attention, and its references.

Nothing in the product (``radar_gguf.engine``, ``run``, ``serve``, ``summarize``, ``hub``) imports
from here except ``bench``, which fills a context with corpus text. The lab imports the product.

- ``reference``  float64 NumPy implementation of the Radar ops (the tests' oracle)
- ``corpus``     text to measure on: built-in corpora of several genres, or any file
- ``records``    result records (JSON), config specs, shared helpers of the eval commands
- ``ppl``        long-context perplexity, Radar vs dense on the same prefilled context
- ``niah``       needle in a haystack
- ``capture``    queries and keys read from the decode graph
- ``methods``    selection rules replayed in NumPy: Radar's scores, the oracle, baselines, adaptive rules
- ``selection``  selection quality: each method's choice against exact attention
- ``select_eval`` the ``eval select`` command
- ``sweep``      delta ppl against bytes read per decode step
- ``eval``       the ``radar-gguf eval`` command
"""
