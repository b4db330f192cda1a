"""Fast paths, each registered with debertav3.model.implementations as it is imported (see there).

Optional: without this package the reference implementations run. Each module below is held to its reference
twin by tests/test_implementations*.py.
"""

from . import cpu_attention, dropout, sdpa_attention  # noqa: F401  (attention and dropout registrations)
from . import mlm_loss  # noqa: F401  (the mlm_loss registration "chunked")
