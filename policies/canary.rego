# Canary policy: is the canary healthy enough to take more traffic or be promoted?
#
# Input: {"error_rate": fraction 0..1, "p99_latency_ms": number, "requests": count in the window}.
# Thresholds: data.thresholds (data.json). Each reason states the observed value and the
# threshold. A missing or malformed input field, or a broken threshold, is itself a reason, and
# so is a canary that served too little traffic: a canary that served nothing has proven nothing.
#
# Most canaries are healthy, so each rule is written to fail as early as it can on a healthy one:
# a rule body is a conjunction, so the order of its tests changes what it costs, never the answer.
# The test that a healthy canary fails comes first, type checks after it (a comparison with a
# value of another type is false or true but never an error, and the type check still decides),
# and anything that could fail on a non-number (arithmetic, number formatting) comes last.
# The field list is written out in the rule rather than kept as a rule of its own: every rule of
# the package is part of the document each decision builds.
package canary

import data.lib

default allow := false

allow if count(deny) == 0

deny contains msg if {
	some name in ["error_rate", "p99_latency_ms", "requests"]
	value := object.get(lib.fields, name, null)
	not lib.usable(value)
	name in object.keys(lib.fields)
	msg := lib.unusable(name, value)
}

deny contains msg if {
	some name in ["error_rate", "p99_latency_ms", "requests"]
	not name in object.keys(lib.fields)
	msg := lib.missing(name)
}

deny contains msg if {
	some name in ["error_rate", "p99_latency_ms", "min_requests"]
	not lib.threshold_ok(name)
	msg := lib.bad_threshold(name)
}

deny contains msg if {
	input.error_rate > 1
	is_number(input.error_rate)
	input.error_rate <= lib.largest
	msg := concat("", ["error_rate must be a fraction between 0 and 1 (got ", lib.up(input.error_rate), ")"])
}

deny contains msg if {
	input.error_rate > data.thresholds.error_rate
	is_number(input.error_rate)
	input.error_rate <= 1
	is_number(data.thresholds.error_rate)
	msg := concat("", [
		"error rate ", lib.up(input.error_rate * 100), "% is above the maximum of ",
		lib.near(data.thresholds.error_rate * 100), "%",
	])
}

deny contains msg if {
	input.p99_latency_ms > data.thresholds.p99_latency_ms
	is_number(input.p99_latency_ms)
	input.p99_latency_ms <= lib.largest
	is_number(data.thresholds.p99_latency_ms)
	msg := concat("", [
		"P99 latency ", lib.up(input.p99_latency_ms), " ms is above the maximum of ",
		lib.near(data.thresholds.p99_latency_ms), " ms",
	])
}

deny contains msg if {
	input.requests < data.thresholds.min_requests
	is_number(input.requests)
	input.requests >= 0
	msg := concat("", [
		"only ", lib.down(input.requests), " requests in the window, below the minimum of ",
		lib.near(data.thresholds.min_requests), ": too little traffic to judge the canary",
	])
}

# Analysis queries (manifest `analysis.metrics`): a query that gave no value fails closed, with the
# collector's reason (no data, NaN, a query error, Prometheus unreachable). input.metrics maps
# each name to its number or null; input.metric_reasons maps the nulls' names to why.
deny contains msg if {
	some name, value in object.get(lib.fields, "metrics", {})
	value == null
	msg := concat("", ["metric ", name, " has no value: ", metric_reason(name)])
}

# One definition, defined for every name: a reason missing from the input is said so.
metric_reason(name) := object.get(object.get(lib.fields, "metric_reasons", {}), name, "no reason given")
