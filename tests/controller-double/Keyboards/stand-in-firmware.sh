#!/bin/bash
# TEST DOUBLE of compiling and linking: the firmware names what it was built from.
set -euo pipefail
me="$1" product="${2:-}"
if touch /controller/.kiisrv-write-test 2>/dev/null; then rootfs=writable; else rootfs=read-only; fi
echo "$me (test double): uid $(id -u), gid $(id -g), root filesystem $rootfs"
# What this build would leave in the shared ccache: a file named after its keymap.
mark=".kiisrv-test-double-$(sha256sum < generatedKeymap.h | cut -c1-16)"
if [ -n "${CCACHE_DISABLE:-}" ]; then
	echo "$me (test double): ccache disabled"
elif [ "${CCACHE_READONLY:-}" = 1 ]; then
	# The attacker: writes by hand (ccache would obey CCACHE_READONLY); the mount must refuse.
	entries="$(ls -A "$CCACHE_DIR")" || { echo "ccache is on but $CCACHE_DIR is not readable" >&2; exit 1; }
	if (echo "$me" > "$CCACHE_DIR/$mark") 2>/dev/null; then
		echo "$me (test double): ccache read-only, yet $mark was written into it"
	else
		echo "$me (test double): ccache read-only ($(echo -n "$entries" | grep -c '') entries): writing $mark was refused"
	fi
else
	echo "$me" > "$CCACHE_DIR/$mark" || { echo "ccache is on but $CCACHE_DIR is not writable" >&2; exit 1; }
	echo "$me (test double): ccache writable: wrote $mark"
fi
{
	echo "KIISRV TEST DOUBLE FIRMWARE - not a real image"
	sha256sum < generatedKeymap.h
	echo "usb product id: ${product}"
	echo "build date: $(date "+%Y-%m-%d %T %z")"
} > kiibohd.dfu.bin
pad_kb="$(grep -ho 'KIISRV_TEST_OUTPUT_KB=[0-9]*' generatedKeymap.h | head -n1 | cut -d= -f2 || true)"
if [ -n "$pad_kb" ]; then  # incompressible padding, for disk-full tests
	head -c "$((pad_kb * 1024))" /dev/urandom >> kiibohd.dfu.bin
fi
