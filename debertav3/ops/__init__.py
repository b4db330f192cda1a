"""Fast paths of the attention core, each registered with debertav3.model.implementations as it is imported.

Optional: without this package the reference runs. Each is held to the reference core by
tests/test_attention_impls.py.
"""

from . import cpu_attention, sdpa_attention  # noqa: F401  (the registrations)
