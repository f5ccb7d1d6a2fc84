#!/bin/bash
# TEST DOUBLE of a kiibohd/controller keyboard build script. Compiles nothing.
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
[ -d "$out" ] || fail "-o must name the build dir (got '$out')"
[ -n "${DefaultMapOverride:-}" ] || fail "DefaultMapOverride is not set"
[ -n "${PartialMapsExpandedOverride+x}" ] || fail "PartialMapsExpandedOverride is not set"
[ -n "${Layout+x}" ] || fail "Layout is not set"
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
maps+=("${partial[@]}")
for stem in "${maps[@]}"; do
	[ -f "$out/$stem.kll" ] || fail "map '$stem' has no file $stem.kll in the build dir"
done
for iface in /sys/class/net/*; do
	[ "$(basename "$iface")" = "lo" ] || fail "the build container has a network interface: $(basename "$iface")"
done

sleep_for="$(grep -ho 'KIISRV_TEST_SLEEP=[0-9]*' "$out"/*.kll | head -n1 | cut -d= -f2 || true)"
if [ -n "$sleep_for" ]; then
	echo "$me (test double): sleeping ${sleep_for}s as asked"
	sleep "$sleep_for"
fi
if grep -q KIISRV_TEST_FAIL "$out"/*.kll; then
	echo "$me (test double): error: failing as asked by KIISRV_TEST_FAIL" >&2
	exit 1
fi

echo "$me (test double): maps ${maps[*]} with Layout='$Layout'"
if touch /controller/.kiisrv-write-test 2>/dev/null; then rootfs=writable; else rootfs=read-only; fi
echo "$me (test double): uid $(id -u), gid $(id -g), root filesystem $rootfs"
if [ -n "${CCACHE_DISABLE:-}" ]; then
	echo "$me (test double): ccache disabled"
else
	touch "$CCACHE_DIR/.kiisrv-test-double" || fail "ccache is on but $CCACHE_DIR is not writable"
	echo "$me (test double): ccache writable"
fi
{
	echo "KIISRV TEST DOUBLE FIRMWARE - not a real image"
	cat "$out"/*.kll | sha256sum
} > "$out/kiibohd.dfu.bin"
printf '{"test_double": true, "script": "%s", "maps": "%s"}\n' "$me" "${maps[*]}" > "$out/kll.json"
pad_kb="$(grep -ho 'KIISRV_TEST_OUTPUT_KB=[0-9]*' "$out"/*.kll | head -n1 | cut -d= -f2 || true)"
if [ -n "$pad_kb" ]; then  # incompressible padding, for disk-full tests
	head -c "$((pad_kb * 1024))" /dev/urandom >> "$out/kiibohd.dfu.bin"
fi
echo "/* test double */" > "$out/generatedKeymap.h"
echo "/* test double */" > "$out/kll_defs.h"
echo "$me (test double): done"
