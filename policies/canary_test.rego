# Unit tests for canary.rego, in `opa test` form; the test suite runs them through regopy too.
# Inputs are given field by field (`with input.x as ...`): regopy 1.5 rejects `with input as {...}`.
# Each `with` chain stays on one line, the form every Rego parser accepts. Tests pin the default
# thresholds (`with data.thresholds as {...}`): they check the policy's logic, so they keep
# passing, in `swiftdeploy validate` too, after a project tunes its data.json.
package canary_test

import data.canary


test_a_healthy_canary_passes if {
	canary.allow with input.error_rate as 0.001 with input.p99_latency_ms as 120 with input.requests as 400 with data.thresholds as {"disk_free_gb": 10, "cpu_load": 2.0, "error_rate": 0.01, "p99_latency_ms": 500, "min_requests": 20}
}

test_exactly_at_every_threshold_passes if {
	canary.allow with input.error_rate as 0.01 with input.p99_latency_ms as 500 with input.requests as 20 with data.thresholds as {"disk_free_gb": 10, "cpu_load": 2.0, "error_rate": 0.01, "p99_latency_ms": 500, "min_requests": 20}
}

test_errors_above_the_limit_are_denied_as_percentages if {
	canary.deny == {"error rate 52% is above the maximum of 1%"} with input.error_rate as 0.52 with input.p99_latency_ms as 120 with input.requests as 400 with data.thresholds as {"disk_free_gb": 10, "cpu_load": 2.0, "error_rate": 0.01, "p99_latency_ms": 500, "min_requests": 20}
}

test_an_error_rate_just_over_never_prints_as_the_limit if {
	canary.deny == {"error rate 1.01% is above the maximum of 1%"} with input.error_rate as 0.01001 with input.p99_latency_ms as 120 with input.requests as 400 with data.thresholds as {"disk_free_gb": 10, "cpu_load": 2.0, "error_rate": 0.01, "p99_latency_ms": 500, "min_requests": 20}
}

test_slow_p99_is_denied_with_value_and_limit if {
	canary.deny == {"P99 latency 612.35 ms is above the maximum of 500 ms"} with input.error_rate as 0 with input.p99_latency_ms as 612.345 with input.requests as 400 with data.thresholds as {"disk_free_gb": 10, "cpu_load": 2.0, "error_rate": 0.01, "p99_latency_ms": 500, "min_requests": 20}
}

test_too_little_traffic_is_denied if {
	canary.deny == {"only 19 requests in the window, below the minimum of 20: too little traffic to judge the canary"} with input.error_rate as 0 with input.p99_latency_ms as 100 with input.requests as 19 with data.thresholds as {"disk_free_gb": 10, "cpu_load": 2.0, "error_rate": 0.01, "p99_latency_ms": 500, "min_requests": 20}
}

test_some_traffic_but_too_little_is_inconclusive_and_still_not_allowed if {
	canary.inconclusive with input.error_rate as 0 with input.p99_latency_ms as 100 with input.requests as 7.77 with data.thresholds as {"disk_free_gb": 10, "cpu_load": 2.0, "error_rate": 0.01, "p99_latency_ms": 500, "min_requests": 20}
	not canary.allow with input.error_rate as 0 with input.p99_latency_ms as 100 with input.requests as 7.77 with data.thresholds as {"disk_free_gb": 10, "cpu_load": 2.0, "error_rate": 0.01, "p99_latency_ms": 500, "min_requests": 20}
}

test_enough_traffic_is_never_inconclusive if {
	not canary.inconclusive with input.error_rate as 0 with input.p99_latency_ms as 100 with input.requests as 20 with data.thresholds as {"disk_free_gb": 10, "cpu_load": 2.0, "error_rate": 0.01, "p99_latency_ms": 500, "min_requests": 20}
}

test_zero_traffic_is_not_inconclusive if {
	not canary.inconclusive with input.error_rate as 0 with input.p99_latency_ms as 0 with input.requests as 0 with data.thresholds as {"disk_free_gb": 10, "cpu_load": 2.0, "error_rate": 0.01, "p99_latency_ms": 500, "min_requests": 20}
}

test_too_little_traffic_with_another_reason_denies if {
	not canary.inconclusive with input.error_rate as 0.5 with input.p99_latency_ms as 100 with input.requests as 4 with data.thresholds as {"disk_free_gb": 10, "cpu_load": 2.0, "error_rate": 0.01, "p99_latency_ms": 500, "min_requests": 20}
	not canary.inconclusive with input.error_rate as 0 with input.requests as 4 with data.thresholds as {"disk_free_gb": 10, "cpu_load": 2.0, "error_rate": 0.01, "p99_latency_ms": 500, "min_requests": 20}
}

test_no_input_is_not_inconclusive if {
	not canary.inconclusive
}

test_zero_traffic_proves_nothing if {
	not canary.allow with input.error_rate as 0 with input.p99_latency_ms as 0 with input.requests as 0 with data.thresholds as {"disk_free_gb": 10, "cpu_load": 2.0, "error_rate": 0.01, "p99_latency_ms": 500, "min_requests": 20}
}

test_no_input_never_allows if {
	not canary.allow
	count(canary.deny) == 3
}

test_an_error_rate_above_one_is_not_a_fraction if {
	canary.deny == {"error_rate must be a fraction between 0 and 1 (got 1.5)"} with input.error_rate as 1.5 with input.p99_latency_ms as 100 with input.requests as 400 with data.thresholds as {"disk_free_gb": 10, "cpu_load": 2.0, "error_rate": 0.01, "p99_latency_ms": 500, "min_requests": 20}
}

test_a_boolean_is_not_a_number if {
	canary.deny == {"p99_latency_ms must be a number (got boolean)"} with input.error_rate as 0 with input.p99_latency_ms as true with input.requests as 400 with data.thresholds as {"disk_free_gb": 10, "cpu_load": 2.0, "error_rate": 0.01, "p99_latency_ms": 500, "min_requests": 20}
}

test_min_requests_comes_from_data if {
	canary.allow with input.error_rate as 0 with input.p99_latency_ms as 100 with input.requests as 5 with data.thresholds.min_requests as 5
}

test_a_custom_metric_with_a_value_passes if {
	canary.allow with input.error_rate as 0 with input.p99_latency_ms as 120 with input.requests as 400 with input.metrics as {"ratio": 0.5} with input.metric_reasons as {} with data.thresholds as {"disk_free_gb": 10, "cpu_load": 2.0, "error_rate": 0.01, "p99_latency_ms": 500, "min_requests": 20}
}

test_a_custom_metric_without_a_value_is_denied_with_its_reason if {
	canary.deny == {"metric ratio has no value: no data: the query returned an empty result"} with input.error_rate as 0 with input.p99_latency_ms as 120 with input.requests as 400 with input.metrics as {"ratio": null} with input.metric_reasons as {"ratio": "no data: the query returned an empty result"} with data.thresholds as {"disk_free_gb": 10, "cpu_load": 2.0, "error_rate": 0.01, "p99_latency_ms": 500, "min_requests": 20}
}

test_a_null_custom_metric_without_a_reason_is_still_denied if {
	canary.deny == {"metric ratio has no value: no reason given"} with input.error_rate as 0 with input.p99_latency_ms as 120 with input.requests as 400 with input.metrics as {"ratio": null} with data.thresholds as {"disk_free_gb": 10, "cpu_load": 2.0, "error_rate": 0.01, "p99_latency_ms": 500, "min_requests": 20}
}

test_a_canary_significantly_slower_than_stable_is_denied_with_both_medians_p_and_counts if {
	canary.deny == {"canary latency is significantly worse than stable: median 61 ms vs 11 ms (more than 10% and 5 ms slower), Mann-Whitney U p < 0.001 below 0.05, 300 canary and 2700 stable requests"} with input.error_rate as 0 with input.p99_latency_ms as 100 with input.requests as 300 with input.comparison as {"latency": {"u": 780000, "p_value": 1e-20, "canary_median_ms": 61, "stable_median_ms": 11, "ratio": 5.5, "canary_samples": 300, "stable_samples": 2700}, "errors": null, "reasons": {}} with data.thresholds as {"error_rate": 0.01, "p99_latency_ms": 500, "min_requests": 20, "comparison_p_value": 0.05, "comparison_latency_tolerance": 0.1, "comparison_latency_min_ms": 5, "comparison_error_rate_tolerance": 0.005}
}

test_a_significant_slowdown_of_a_millisecond_or_two_passes if {
	canary.allow with input.error_rate as 0 with input.p99_latency_ms as 100 with input.requests as 300 with input.comparison as {"latency": {"u": 480000, "p_value": 0.0001, "canary_median_ms": 3, "stable_median_ms": 2, "ratio": 1.5, "canary_samples": 300, "stable_samples": 2700}} with data.thresholds as {"error_rate": 0.01, "p99_latency_ms": 500, "min_requests": 20, "comparison_p_value": 0.05, "comparison_latency_tolerance": 0.1, "comparison_latency_min_ms": 5, "comparison_error_rate_tolerance": 0.005}
}

test_a_significant_but_small_slowdown_passes if {
	canary.allow with input.error_rate as 0 with input.p99_latency_ms as 100 with input.requests as 300 with input.comparison as {"latency": {"u": 480000, "p_value": 0.012, "canary_median_ms": 11.5, "stable_median_ms": 11, "ratio": 1.045, "canary_samples": 300, "stable_samples": 2700}} with data.thresholds as {"error_rate": 0.01, "p99_latency_ms": 500, "min_requests": 20, "comparison_p_value": 0.05, "comparison_latency_tolerance": 0.1, "comparison_latency_min_ms": 5, "comparison_error_rate_tolerance": 0.005}
}

test_a_canary_with_significantly_more_errors_is_denied if {
	canary.deny == {"canary error rate is significantly worse than stable: 5% vs 0.5% (more than 0.5 points higher), Fisher exact test p = 0.012 below 0.05, 300 canary and 2700 stable requests"} with input.error_rate as 0.005 with input.p99_latency_ms as 100 with input.requests as 300 with input.comparison as {"errors": {"z": 2.3, "p_value": 0.0111, "canary_error_rate": 0.05, "stable_error_rate": 0.005, "canary_samples": 300, "stable_samples": 2700}} with data.thresholds as {"error_rate": 0.01, "p99_latency_ms": 500, "min_requests": 20, "comparison_p_value": 0.05, "comparison_latency_tolerance": 0.1, "comparison_latency_min_ms": 5, "comparison_error_rate_tolerance": 0.005}
}

test_no_comparison_or_a_null_one_does_not_deny if {
	canary.allow with input.error_rate as 0 with input.p99_latency_ms as 100 with input.requests as 300 with input.comparison as {"latency": null, "errors": null, "reasons": {"latency": "too few requests"}} with data.thresholds as {"error_rate": 0.01, "p99_latency_ms": 500, "min_requests": 20, "comparison_p_value": 0.05, "comparison_latency_tolerance": 0.1, "comparison_latency_min_ms": 5, "comparison_error_rate_tolerance": 0.005}
	canary.allow with input.error_rate as 0 with input.p99_latency_ms as 100 with input.requests as 300 with data.thresholds as {"error_rate": 0.01, "p99_latency_ms": 500, "min_requests": 20}
}

test_a_comparison_without_its_thresholds_fails_closed if {
	canary.deny["threshold data.thresholds.comparison_p_value is missing or not a usable number (fix policies/data.json)"] with input.error_rate as 0 with input.p99_latency_ms as 100 with input.requests as 300 with input.comparison as {"latency": null} with data.thresholds as {"error_rate": 0.01, "p99_latency_ms": 500, "min_requests": 20}
}
