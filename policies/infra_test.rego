# Unit tests for infra.rego, in `opa test` form; the test suite runs them through regopy too.
# Inputs are given field by field (`with input.x as ...`): regopy 1.5 rejects `with input as {...}`.
# Each `with` chain stays on one line, the form every Rego parser accepts. Tests pin the default
# thresholds (`with data.thresholds as {...}`): they check the policy's logic, so they keep
# passing, in `swiftdeploy validate` too, after a project tunes its data.json.
package infra_test

import data.infra


test_a_healthy_host_may_deploy if {
	infra.allow with input.disk_free_gb as 50 with input.cpu_load as 0.5 with data.thresholds as {"disk_free_gb": 10, "cpu_load": 2.0, "error_rate": 0.01, "p99_latency_ms": 500, "min_requests": 20}
}

test_exactly_at_both_thresholds_is_allowed if {
	infra.allow with input.disk_free_gb as 10 with input.cpu_load as 2 with data.thresholds as {"disk_free_gb": 10, "cpu_load": 2.0, "error_rate": 0.01, "p99_latency_ms": 500, "min_requests": 20}
}

test_low_disk_is_denied_with_value_and_minimum if {
	infra.deny == {"disk free 8.5 GB is below the minimum of 10 GB"} with input.disk_free_gb as 8.5 with input.cpu_load as 1 with data.thresholds as {"disk_free_gb": 10, "cpu_load": 2.0, "error_rate": 0.01, "p99_latency_ms": 500, "min_requests": 20}
}

test_disk_just_under_the_minimum_never_prints_as_the_minimum if {
	infra.deny == {"disk free 9.99 GB is below the minimum of 10 GB"} with input.disk_free_gb as 9.999 with input.cpu_load as 1 with data.thresholds as {"disk_free_gb": 10, "cpu_load": 2.0, "error_rate": 0.01, "p99_latency_ms": 500, "min_requests": 20}
}

test_high_cpu_is_denied_with_value_and_maximum if {
	infra.deny == {"CPU load 2.4 is above the maximum of 2"} with input.disk_free_gb as 50 with input.cpu_load as 2.4 with data.thresholds as {"disk_free_gb": 10, "cpu_load": 2.0, "error_rate": 0.01, "p99_latency_ms": 500, "min_requests": 20}
}

test_both_problems_are_reported if {
	count(infra.deny) == 2 with input.disk_free_gb as 1 with input.cpu_load as 9 with data.thresholds as {"disk_free_gb": 10, "cpu_load": 2.0, "error_rate": 0.01, "p99_latency_ms": 500, "min_requests": 20}
}

test_no_input_never_allows if {
	not infra.allow
	infra.deny == {"disk_free_gb is missing from the input", "cpu_load is missing from the input"}
}

test_a_partial_input_never_allows if {
	infra.deny == {"cpu_load is missing from the input"} with input.disk_free_gb as 50 with data.thresholds as {"disk_free_gb": 10, "cpu_load": 2.0, "error_rate": 0.01, "p99_latency_ms": 500, "min_requests": 20}
}

test_a_string_is_not_a_number if {
	infra.deny == {"disk_free_gb must be a number (got string \"lots\")"} with input.disk_free_gb as "lots" with input.cpu_load as 1 with data.thresholds as {"disk_free_gb": 10, "cpu_load": 2.0, "error_rate": 0.01, "p99_latency_ms": 500, "min_requests": 20}
}

test_null_is_not_a_number if {
	infra.deny == {"cpu_load must be a number (got null)"} with input.disk_free_gb as 50 with input.cpu_load as null with data.thresholds as {"disk_free_gb": 10, "cpu_load": 2.0, "error_rate": 0.01, "p99_latency_ms": 500, "min_requests": 20}
}

test_a_negative_reading_is_rejected if {
	infra.deny == {"cpu_load must not be negative (got -1)"} with input.disk_free_gb as 50 with input.cpu_load as -1 with data.thresholds as {"disk_free_gb": 10, "cpu_load": 2.0, "error_rate": 0.01, "p99_latency_ms": 500, "min_requests": 20}
}

test_thresholds_come_from_data if {
	infra.allow with input.disk_free_gb as 5 with input.cpu_load as 1 with data.thresholds.disk_free_gb as 4
}

test_a_broken_threshold_denies if {
	infra.deny == {"threshold data.thresholds.cpu_load is missing or not a usable number (fix policies/data.json)"} with input.disk_free_gb as 50 with input.cpu_load as 1 with data.thresholds.cpu_load as "two"
}
