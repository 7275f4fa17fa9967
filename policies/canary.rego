# Canary policy: is the canary healthy enough to take more traffic or be promoted?
#
# Input: {"error_rate": fraction 0..1, "p99_latency_ms": number, "requests": count in the window}.
# Thresholds: data.thresholds (data.json). Each reason states the observed value and the
# threshold. A missing or malformed input field, or a broken threshold, is itself a reason, and
# so is a canary that served too little traffic: a canary that served nothing has proven nothing.
# Some traffic but too little, and nothing else wrong, is also `inconclusive` (see below).
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

# Inconclusive: the canary served some traffic, but less than min_requests, and nothing else is
# wrong. It is neither allowed (the too-little-traffic reason stays in deny, so a reader of allow
# and deny alone still holds) nor a failure: the rollout holds at its step and asks again. Any
# other reason (an error rate above the maximum, a missing field, a broken threshold) denies.
# Written with no negation and presence tested on defined values: undefined input makes the body
# fail in OPA and regopy alike, and the default answers.
default inconclusive := false

inconclusive if {
	input.requests > 0
	input.requests < data.thresholds.min_requests
	count(deny) == 1
	is_number(input.requests)
	is_number(data.thresholds.min_requests)
}

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

# Canary against stable (input.comparison, measured by the collector over the same window from the
# router's per-request samples): deny when the canary is significantly worse (p below
# comparison_p_value) AND worse by more than a tolerance (the canary's median latency above
# stable's by more than comparison_latency_tolerance, a fraction, and by more than
# comparison_latency_min_ms: nginx logs whole milliseconds, so 2 ms against 3 ms is no evidence of
# a slower service); the error rates by more than
# comparison_error_rate_tolerance, a fraction of requests). The absolute thresholds above still
# apply. A comparison that is absent, or null (too few requests on a side), does not deny.
deny contains msg if {
	c := compared("latency")
	c.p_value < data.thresholds.comparison_p_value
	c.canary_median_ms > c.stable_median_ms * (1 + data.thresholds.comparison_latency_tolerance)
	c.canary_median_ms > c.stable_median_ms + data.thresholds.comparison_latency_min_ms
	is_number(c.p_value)
	msg := concat("", [
		"canary latency is significantly worse than stable: median ", lib.up(c.canary_median_ms), " ms vs ",
		lib.down(c.stable_median_ms), " ms (more than ", lib.near(data.thresholds.comparison_latency_tolerance * 100),
		"% and ", lib.near(data.thresholds.comparison_latency_min_ms), " ms slower), Mann-Whitney U ", p_text(c.p_value), " below ", lib.near(data.thresholds.comparison_p_value),
		", ", samples_text(c),
	])
}

deny contains msg if {
	c := compared("errors")
	c.p_value < data.thresholds.comparison_p_value
	c.canary_error_rate > c.stable_error_rate + data.thresholds.comparison_error_rate_tolerance
	is_number(c.p_value)
	msg := concat("", [
		"canary error rate is significantly worse than stable: ", lib.up(c.canary_error_rate * 100), "% vs ",
		lib.down(c.stable_error_rate * 100), "% (more than ", lib.near(data.thresholds.comparison_error_rate_tolerance * 100),
		" points higher), Fisher exact test ", p_text(c.p_value), " below ",
		lib.near(data.thresholds.comparison_p_value), ", ", samples_text(c),
	])
}

# A comparison present without usable thresholds fails closed (without one, nothing is asked).
deny contains msg if {
	is_object(object.get(lib.fields, "comparison", null))
	some name in ["comparison_p_value", "comparison_latency_tolerance", "comparison_latency_min_ms", "comparison_error_rate_tolerance"]
	not lib.threshold_ok(name)
	msg := lib.bad_threshold(name)
}

# The comparison of one metric, defined only when it is an object (presence tested on defined values).
compared(name) := c if {
	comparison := object.get(lib.fields, "comparison", {})
	is_object(comparison)
	c := object.get(comparison, name, null)
	is_object(c)
}

# A p-value as text: "p < 0.001", else "p = 0.012" (rounded up to thousandths; p < 1 on the deny path).
p_text(p) := "p < 0.001" if p < 0.001

p_text(p) := concat("", ["p = 0.", substring(format_int(ceil(round(p * 1000000) / 1000) + 1000, 10), 1, 3)]) if {
	p >= 0.001
}

samples_text(c) := concat("", [
	format_int(c.canary_samples, 10), " canary and ", format_int(c.stable_samples, 10), " stable requests",
])
