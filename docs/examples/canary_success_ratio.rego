# Example: a canary policy rule judging a custom metric from `analysis.metrics`.
#
# The manifest names a PromQL query (the collector evaluates it each interval and the value
# reaches the policy as input.metrics.success_ratio; a query without a value is already denied
# by canary.rego, with its reason):
#
#   analysis:
#     prometheus: {url: http://127.0.0.1:9090}
#     metrics:
#       - name: success_ratio
#         query: sum(rate(svc_requests_total{code="200",version="{{ version }}"}[{{ window }}])) / sum(rate(svc_requests_total{version="{{ version }}"}[{{ window }}]))
#
# Copy this file into the project's policies/ folder next to canary.rego (same package: its deny
# rule adds to the default ones) and add "min_success_ratio": 0.99 to data.json's thresholds.
package canary

import data.lib

deny contains msg if {
	input.metrics.success_ratio < data.thresholds.min_success_ratio
	is_number(input.metrics.success_ratio)
	is_number(data.thresholds.min_success_ratio)
	msg := concat("", [
		"success ratio ", lib.down(input.metrics.success_ratio * 100), "% is below the minimum of ",
		lib.near(data.thresholds.min_success_ratio * 100), "%",
	])
}
