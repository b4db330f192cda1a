"""Fast paths, each registered with debertav3.model.implementations as it is imported (see there).

Optional: without this package the reference implementations run. Each module below is held to its reference
twin by the tests (tests/test_attention_impls.py, tests/test_kernels.py, tests/test_dropout_impls.py).
"""

from . import cpu_attention, dropout, sdpa_attention  # noqa: F401  (the registrations)
