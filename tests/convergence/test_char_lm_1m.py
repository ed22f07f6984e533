"""The char-LM tests on the 1.07M-parameter configuration (matrices of 8k-66k elements, 2,000
steps): whether the small model's results are an artifact of tiny tensors. Full suite only
(12-30 minutes per method on 2 cores); its methods send 13-15x fewer bytes, so the 30x target
is skipped here."""

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
# Measured 2026-11-30, dense 1.4668 (docs/convergence.md).
KNOWN_MISSES = {
    "topk_bitmap 10%": "1.4973 (+2.08%) at 16x fewer bytes: just above the bound",
}
THIRTY_X_MISS = ""  # no method of this suite reaches 30x: the test skips
# Measured: topk_bitmap 15% is the only method at 10x or more within 2% here (one of two).
TEN_X_MISS = "only topk_bitmap 15% (+0.49% at 13x); topk_bitmap 10% ends +2.08%"
