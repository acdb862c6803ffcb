"""The benchmark reads its figures from wrk's report; a misread unit or a missed error line would
silently change every table."""

import pytest

from bench.common import parse_wrk

ERRORS_REPORT = """Running 1s test @ http://127.0.0.1:18766/missing
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     5.15ms   11.52ms  87.10ms   94.50%
    Req/Sec   825.30    401.80     1.26k    70.00%
  Latency Distribution
     50%    1.51ms
     75%    3.95ms
     90%    9.43ms
     99%   67.82ms
  823 requests in 1.00s, 418.11KB read
  Socket errors: connect 0, read 3, write 1, timeout 2
  Non-2xx or 3xx responses: 823
Requests/sec:    820.58
Transfer/sec:    416.88KB
"""

CLEAN_REPORT = """Running 10s test @ http://127.0.0.1:8000/v1/users/me
  2 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   412.00us  101.00us   1.20s    90.00%
    Req/Sec    60.00k     2.00k   70.00k    80.00%
  Latency Distribution
     50%  850.00us
     75%    1.00ms
     90%    2.00ms
     99%    1.20s
  1200000 requests in 10.00s, 300.00MB read
Requests/sec: 119999.50
Transfer/sec:     30.00MB
"""


def test_errors_are_counted() -> None:
    result = parse_wrk(ERRORS_REPORT)
    assert result.requests_per_second == 820.58
    assert result.requests == 823
    assert result.p50_ms == pytest.approx(1.51)
    assert result.p99_ms == pytest.approx(67.82)
    assert (result.non_2xx, result.socket_errors, result.errors) == (823, 6, 829)


def test_latency_units_become_milliseconds() -> None:
    result = parse_wrk(CLEAN_REPORT)
    assert result.p50_ms == pytest.approx(0.85)
    assert result.p99_ms == pytest.approx(1200.0)
    assert result.errors == 0


def test_a_report_without_percentiles_is_refused() -> None:
    without = "\n".join(line for line in CLEAN_REPORT.splitlines() if "%" not in line or "Stdev" in line)
    with pytest.raises(RuntimeError, match="unexpected wrk output"):
        parse_wrk(without)
