#!/bin/bash
# TEST DOUBLE of a kiibohd/controller keyboard build script. Compiles nothing.
# Like the real scripts it "configures" a build folder (here: checks its inputs and
# writes a build.ninja) and runs ninja there; the ninja graph has the real one's shape
# (the .kll files -> the generated headers -> the firmware), so builds that start from
# a warm tree and run ninja alone exercise the same incremental logic.
set -euo pipefail
me="$(basename "$0")"
here="$(cd "$(dirname "$0")" && pwd)"
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
[ -d "$out" ] || fail "-o must name the build dir (got '$out')"
[ -n "${DefaultMapOverride:-}" ] || fail "DefaultMapOverride is not set"
[ -n "${PartialMapsExpandedOverride+x}" ] || fail "PartialMapsExpandedOverride is not set"
[ "${PIPENV_ACTIVE:-}" = 1 ] || fail "the Keyboards environment is not active"
case "$me" in
	*-l.bash|*-r.bash) [ "${SPLIT_KEYBOARD:-}" = "1" ] || fail "split script without SPLIT_KEYBOARD=1" ;;
esac

read -r -a default_map <<< "$DefaultMapOverride"
case "${default_map[0]}" in
	stdFuncMap|infinity_ergodox/lcdFuncMap) ;;
	*) fail "DefaultMapOverride must start with the function map, got '${default_map[0]}'" ;;
esac
maps=("${default_map[@]:1}")
IFS=';' read -r -a partial <<< "$PartialMapsExpandedOverride"
for layer in "${partial[@]}"; do
	for word in $layer; do
		case "$word" in
			stdFuncMap|infinity_ergodox/lcdFuncMap) ;;
			*) maps+=("$word") ;;
		esac
	done
done
inputs=()
for stem in "${maps[@]}"; do
	[ -f "$out/$stem.kll" ] || fail "map '$stem' has no file $stem.kll in the build dir"
	inputs+=("$stem.kll")
done
echo "$me (test double): configuring ${out} for maps ${maps[*]} with Layout='${Layout:-}'"
{
	echo "# test double of the keyboard's ninja build, made by $me"
	echo "rule kll"
	echo "  command = ${here}/stand-in-kll.sh ${inputs[*]}"
	echo "  description = Generating KLL Layout (test double)"
	echo "rule firmware"
	echo "  command = ${here}/stand-in-firmware.sh $me"
	echo "  description = Linking kiibohd.dfu.bin (test double)"
	echo "build generatedKeymap.h kll_defs.h kll.json: kll ${inputs[*]}"
	echo "build kiibohd.dfu.bin: firmware generatedKeymap.h"
	echo "default kiibohd.dfu.bin"
} > "$out/build.ninja"
echo "$me" >> "$out/configured-by"
# As CMake's CMAKE_EXPORT_COMPILE_COMMANDS does: build paths, never for the zip.
printf '[{"directory": "%s", "command": "stand-in"}]\n' "$out" > "$out/compile_commands.json"
cd "$out"
ninja
echo "$me (test double): done"
