#!/bin/bash
# TEST DOUBLE of compiling and linking: the firmware names what it was built from.
set -euo pipefail
me="$1" product="${2:-}"
if touch /controller/.kiisrv-write-test 2>/dev/null; then rootfs=writable; else rootfs=read-only; fi
echo "$me (test double): uid $(id -u), gid $(id -g), root filesystem $rootfs"
# ccache as a compile would use it: one object per generated header, named after its
# content (kll_defs.h: the counts a one-key change keeps; generatedKeymap.h: the keys),
# looked up in and stored into $CCACHE_DIR. It also plays the attacker: it says which
# other volumes it can see (none may be mounted but its own folder and its client's).
if [ -n "${CCACHE_DISABLE:-}" ]; then
	echo "$me (test double): ccache disabled"
else
	for header in kll_defs.h generatedKeymap.h; do
		kind=defs
		[ "$header" = generatedKeymap.h ] && kind=keymap
		mark=".kiisrv-test-double-${kind}-$(sha256sum < "$header" | cut -c1-16)"
		if [ -e "$CCACHE_DIR/$mark" ]; then how="hit local"; else how=miss; fi
		echo "$me (test double): ccache $header $how $mark"
		echo "$me" > "$CCACHE_DIR/$mark" || { echo "ccache is on but $CCACHE_DIR is not writable" >&2; exit 1; }
	done
fi
echo "$me (test double): mounts: $(awk '$2 ~ /^\/mnt\// {print $2}' /proc/self/mounts | sort | tr '\n' ' ')"
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
