# Infrastructure policy: may SwiftDeploy deploy on this host right now?
#
# Input: {"disk_free_gb": number, "cpu_load": number}. Thresholds: data.thresholds (data.json).
# Each reason states the observed value and the threshold. A missing or malformed input field,
# or a broken threshold, is itself a reason: an empty or partial input never allows.
#
# Each rule tests first what a healthy host fails, as in canary.rego: the order of a rule's
# tests changes its cost, never its answer, and arithmetic and formatting come last.
package infra

import data.lib

default allow := false

allow if count(deny) == 0

deny contains msg if {
	some name in ["disk_free_gb", "cpu_load"]
	value := object.get(lib.fields, name, null)
	not lib.usable(value)
	name in object.keys(lib.fields)
	msg := lib.unusable(name, value)
}

deny contains msg if {
	some name in ["disk_free_gb", "cpu_load"]
	not name in object.keys(lib.fields)
	msg := lib.missing(name)
}

deny contains msg if {
	some name in ["disk_free_gb", "cpu_load"]
	not lib.threshold_ok(name)
	msg := lib.bad_threshold(name)
}

deny contains msg if {
	input.disk_free_gb < data.thresholds.disk_free_gb
	is_number(input.disk_free_gb)
	input.disk_free_gb >= 0
	msg := concat("", [
		"disk free ", lib.down(input.disk_free_gb), " GB is below the minimum of ",
		lib.near(data.thresholds.disk_free_gb), " GB",
	])
}

deny contains msg if {
	input.cpu_load > data.thresholds.cpu_load
	is_number(input.cpu_load)
	input.cpu_load <= lib.largest
	is_number(data.thresholds.cpu_load)
	msg := concat("", [
		"CPU load ", lib.up(input.cpu_load), " is above the maximum of ",
		lib.near(data.thresholds.cpu_load),
	])
}
