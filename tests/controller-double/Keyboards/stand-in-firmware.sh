#!/bin/bash
# TEST DOUBLE of compiling and linking: the firmware names what it was built from.
set -euo pipefail
me="$1" product="${2:-}"
if touch /controller/.kiisrv-write-test 2>/dev/null; then rootfs=writable; else rootfs=read-only; fi
echo "$me (test double): uid $(id -u), gid $(id -g), root filesystem $rootfs"
# Whether a compile would use ccache (it must not: no cache is kept between builds), and,
# playing the attacker, which volumes it can see under /mnt (only its own folder).
if [ -n "${CCACHE_DISABLE:-}" ]; then
	echo "$me (test double): ccache disabled"
else
	echo "$me (test double): ccache on, CCACHE_DIR=${CCACHE_DIR:-}"
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
