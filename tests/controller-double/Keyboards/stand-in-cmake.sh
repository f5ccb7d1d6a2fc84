#!/bin/bash
# TEST DOUBLE of CMake for the stand-in keyboard scripts (installed as cmake in the
# test-double image; the kiisrv wrapper docker/controller/bin/cmake comes first on PATH
# and records each configure). A configure checks that every map it is given has its
# .kll file here and writes a build.ninja whose graph is the real one's: the scancode
# map and the layers -> the generated headers (stand-in-kll.sh) -> the firmware
# (stand-in-firmware.sh). `cmake --build <dir>` runs ninja there.
set -euo pipefail
here="$(cd "$(dirname "$(readlink -f "$0")")" && pwd)"
fail() { echo "cmake (test double): $*" >&2; exit 1; }
if [ "${1:-}" = --build ]; then
	cd "$2"
	exec ninja
fi
declare -A opt=()
for arg in "$@"; do
	case "$arg" in
		-D*=*) name="${arg#-D}"; opt["${name%%=*}"]="${arg#*=}" ;;
	esac
done
read -r -a default_map <<< "${opt[DefaultMap]:-}"
case "${default_map[0]:-}" in
	stdFuncMap|infinity_ergodox/lcdFuncMap) ;;
	*) fail "DefaultMap must start with the function map, got '${default_map[0]:-}'" ;;
esac
maps=("${default_map[@]:1}")
IFS=';' read -r -a partial <<< "${opt[PartialMaps]:-}"
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
	[ -f "$stem.kll" ] || fail "map '$stem' has no file $stem.kll in the build dir"
	inputs+=("$stem.kll")
done
scan="${opt[BaseMap]##* }"
echo "${opt[ScanModule]} (test double): configuring ${PWD} for maps ${maps[*]} with scancode map ${scan}"
{
	echo "# test double of the keyboard's ninja build"
	echo "rule kll"
	echo "  command = /usr/local/lib/kiisrv/bin/kll-limit ${here}/stand-in-kll.sh --base ${scan} ${inputs[*]}"
	echo "  description = Generating KLL Layout (test double)"
	echo "rule firmware"
	echo "  command = ${here}/stand-in-firmware.sh ${opt[ScanModule]}.bash ${opt[PRODUCT_ID]}"
	echo "  description = Linking kiibohd.dfu.bin (test double)"
	echo "build generatedKeymap.h kll_defs.h kll.json: kll ${inputs[*]}"
	echo "build kiibohd.dfu.bin: firmware generatedKeymap.h"
	echo "default kiibohd.dfu.bin"
} > build.ninja
echo "${opt[ScanModule]}.bash" >> configured-by
# As CMAKE_EXPORT_COMPILE_COMMANDS does: build paths, never for the zip.
printf '[{"directory": "%s", "command": "stand-in"}]\n' "$PWD" > compile_commands.json
