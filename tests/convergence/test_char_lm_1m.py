"""The char-LM tests on the 1.07M-parameter configuration (matrices of 16k-66k elements, 2,000
steps): whether the small model's results are an artifact of tiny tensors. Full suite only
(about 12 minutes per method on 2 cores)."""

from __future__ import annotations

import pytest
from test_char_lm import (  # noqa: F401  (collected here with this module's workload)
    AT_10X_WITHIN_2_PERCENT,
    pytest_generate_tests,
    test_a_method_at_thirty_times_fewer_bytes_within_one_percent,
    test_dense_learns,
    test_method_within_two_percent_of_dense,
    test_two_methods_at_ten_times_fewer_bytes_within_two_percent,
)

pytestmark = pytest.mark.convergence
WORKLOAD = "char_lm_1m"
KNOWN_MISSES: dict[str, str] = {}
THIRTY_X_MISS = ""
