# Helpers shared by the SwiftDeploy policies: why an input field or threshold is unusable, and
# number formatting.
#
# Every reason must read the same from OPA (Go) and from the embedded engine (regopy). The two
# print floats differently through sprintf (%v, %f), so numbers are formatted here with round,
# floor, ceil, format_int and concatenation only, which agree in both. The policies call these
# functions only on the deny path, which keeps an allow cheap.
package lib

# Beyond this magnitude a reading is not plausible, and number formatting would overflow.
largest := 1000000000000

# The input document, or {} when there is none (a query without input, `opa test` without
# `with input`). Defined in every case, so the policies never reach an undefined reference.
default fields := {}

fields := input if is_object(input)

# The thresholds object from data.json, or {} when it is missing or not an object.
default thresholds := {}

thresholds := data.thresholds if is_object(data.thresholds)

# Presence is always tested on a defined value, never through a negated call on a reference that
# may be undefined: OPA (Go) evaluates `not f(input[name])` with `input[name]` undefined by
# binding the reference outside the negation, so the rule body fails and no deny fires, while
# regopy makes the negation succeed. `name in object.keys(fields)` and `object.get(...)` are
# defined whatever the input holds, so both engines give the same answer.
missing(name) := concat("", [name, " is missing from the input"])

# Whether x is a usable reading: a number from 0 to largest. A policy tests this first, so a
# healthy field costs one call, and works out why a field is unusable only when it is.
usable(x) if {
	is_number(x)
	x >= 0
	x <= largest
}

# Why the value of input field `name`, which is present, is not a usable reading.
unusable(name, value) := concat("", [name, " must be a number (got ", _describe(value), ")"]) if not is_number(value)

unusable(name, value) := out_of_range(name, value) if is_number(value)

# Why the number in input field `name` is unusable, if it is.
out_of_range(name, value) := concat("", [name, " must not be negative (got -", up(abs(value)), ")"]) if {
	value < 0
	value >= 0 - largest
}

out_of_range(name, value) := concat("", [name, " is out of range (magnitude above ", format_int(largest, 10), ")"]) if {
	abs(value) > largest
}

# Whether threshold `name` is usable: present in data.thresholds and a number.
threshold_ok(name) if is_number(object.get(thresholds, name, null))

bad_threshold(name) := concat("", ["threshold data.thresholds.", name, " is missing or not a usable number (fix policies/data.json)"])

_describe(value) := concat("", ["string \"", substring(value, 0, 40), "\""]) if is_string(value)

_describe(value) := type_name(value) if not is_string(value)

# Each of these first takes x in millionths, as an integer (round(x * 1000000)), so float noise
# (0.29 * 100 = 28.999...) cannot tip floor or ceil. That step is written out in each rather than
# kept as a function: a deny formats up to six numbers, and every function call costs.

# x >= 0 as text with at most two decimals, rounded down: a reading shown against a minimum
# never appears to meet it (9.999 GB prints as 9.99, not 10).
down(x) := _hundredths_text(floor(round(x * 1000000) / 10000))

# Rounded up: a reading shown against a maximum never appears to be within it.
up(x) := _hundredths_text(ceil(round(x * 1000000) / 10000))

# Rounded to the nearest hundredth: for thresholds.
near(x) := _hundredths_text(round(round(x * 1000000) / 10000))

# h >= 0 hundredths as a decimal without trailing zeros: 1250 -> "12.5", 1205 -> "12.05", 1200 -> "12".
# The two fraction digits come from formatting 100 + h's last two digits and dropping the "1";
# trimming the cutset ".0" from ".dd" drops its trailing zeros, then the point if nothing is left.
# (`%` is avoided: regopy 1.5 returns a malformed number for an exact remainder of zero.)
_hundredths_text(h) := concat("", [format_int(whole, 10), trim_right(fraction, ".0")]) if {
	whole := floor(h / 100)
	fraction := concat("", [".", substring(format_int((h - whole * 100) + 100, 10), 1, 2)])
}
