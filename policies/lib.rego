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

# Whether x is a usable reading: a number from 0 to largest. A policy tests this first, so a
# healthy field costs one call, and works out why a field is unusable only when it is.
usable(x) if {
	is_number(x)
	x >= 0
	x <= largest
}

# Why input field `name` is not a usable reading: not a number, or out of range.
unusable(name) := not_a_number(name) if not is_number(input[name])

unusable(name) := out_of_range(name, input[name]) if is_number(input[name])

# Why input field `name` is not a number: missing, or some other type.
not_a_number(name) := concat("", [name, " is missing from the input"]) if not _given(name)

not_a_number(name) := concat("", [name, " must be a number (got ", _describe(input[name]), ")"]) if _given(name)

# Why the number in input field `name` is unusable, if it is.
out_of_range(name, value) := concat("", [name, " must not be negative (got -", up(abs(value)), ")"]) if {
	value < 0
	value >= 0 - largest
}

out_of_range(name, value) := concat("", [name, " is out of range (magnitude above ", format_int(largest, 10), ")"]) if {
	abs(value) > largest
}

bad_threshold(name) := concat("", ["threshold data.thresholds.", name, " is missing or not a usable number (fix policies/data.json)"])

_given(name) if _ = input[name]

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
