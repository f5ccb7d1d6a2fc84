#!/bin/bash
# TEST DOUBLE of a kiibohd/controller keyboard build script (and its cmake.bash).
# Compiles nothing. Like the real scripts it reads its inputs, picks the scan module's
# scancode map by Layout (WhiteFox: truefox by default; the Infinity boards: alphabet),
# calls `cmake -D... -G Ninja` in the build folder and then `cmake --build .`; the
# double's cmake (stand-in-cmake.sh) writes a ninja graph of the real one's shape (the
# scancode map and the .kll files -> the generated headers -> the firmware). So a build
# that reuses a warm tree configured for another Layout ships another scancode map, as
# a real one would, and the tests can see it.
set -euo pipefail
me="$(basename "$0")"
controller="" out=""
while getopts "c:o:" opt; do
	case "$opt" in
		c) controller="$OPTARG" ;;
		o) out="$OPTARG" ;;
		*) echo "$me: unknown option" >&2; exit 2 ;;
	esac
done
fail() { echo "$me (test double): $*" >&2; exit 1; }
[ -d "$controller" ] || fail "-c must name the controller dir (got '$controller')"
[ -n "$out" ] || fail "-o must name the build dir"
[ -n "${DefaultMapOverride:-}" ] || fail "DefaultMapOverride is not set"
[ -n "${PartialMapsExpandedOverride+x}" ] || fail "PartialMapsExpandedOverride is not set"
[ "${PIPENV_ACTIVE:-}" = 1 ] || fail "the Keyboards environment is not active"
case "$me" in
	*-l.bash|*-r.bash) [ "${SPLIT_KEYBOARD:-}" = "1" ] || fail "split script without SPLIT_KEYBOARD=1" ;;
esac

# As the real scripts: only some keyboards have variants, each with its own scancode
# map and USB product id.
product=0xB04D
case "$me" in
	whitefox.bash)
		Layout="${Layout:-truefox}"
		case "$Layout" in
			aria) product=0x0008 ;; iso) product=0x0007 ;; jackofalltrades) product=0x000B ;;
			truefox) product=0x000A ;; vanilla) product=0x0006 ;; winkeyless) product=0x0009 ;;
		esac
		base="scancode_map scancode_map.${Layout}" name="$Layout" ;;
	infinity.bash|infinity_led.bash)
		Layout="${Layout:-alphabet}"
		base="scancode_map scancode_map.${Layout}" name="$Layout" ;;
	*) base="scancode_map" name="" ;;
esac

mkdir -p "$out"
cd "$out"
cmake -DCHIP=stand-in -DScanModule="${me%.bash}" -DLayoutName="${name:+:$name}" \
	-DBaseMap="$base" -DDefaultMap="$DefaultMapOverride" \
	-DPartialMaps="$PartialMapsExpandedOverride" -DPRODUCT_ID="$product" \
	"$controller" -G Ninja || { echo "Error in cmake. Exiting..."; exit 1; }
cmake --build . || { echo "Error in build. Exiting..."; exit 1; }
echo "$me (test double): done"
