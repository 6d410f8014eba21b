-- SPDX-License-Identifier: MIT
-- wrk -s wrk_report.lua: one JSON line at the end of the run, for
-- evsteer-bench (wrk's own summary rounds its figures and has no p99.9).
-- Latencies in microseconds; errors by kind as wrk counts them (status:
-- answers other than 2xx/3xx).
done = function(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      '{"requests": %d, "duration_us": %d, "bytes": %d, ' ..
      '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, ' ..
      '"timeout": %d}, "latency_us": {"p50": %d, "p90": %d, "p99": %d, ' ..
      '"p999": %d, "max": %d, "mean": %.1f}}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency:percentile(99.9),
      latency.max, latency.mean))
end
