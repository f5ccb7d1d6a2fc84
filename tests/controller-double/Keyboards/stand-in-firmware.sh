#!/bin/bash
# TEST DOUBLE of compiling and linking: the firmware names what it was built from.
set -euo pipefail
me="$1" product="${2:-}"
if touch /controller/.kiisrv-write-test 2>/dev/null; then rootfs=writable; else rootfs=read-only; fi
echo "$me (test double): uid $(id -u), gid $(id -g), root filesystem $rootfs"
# ccache as a compile would use it: one object per generated header, named after its
# content (kll_defs.h: the counts a one-key change keeps; generatedKeymap.h: the keys),
# looked up in the primary storage ($CCACHE_DIR, unless CCACHE_REMOTE_ONLY=1) and the
# secondary one (CCACHE_REMOTE_STORAGE=file:<dir>[|read-only]), stored in both unless
# read-only.
remote="${CCACHE_REMOTE_STORAGE:-}"
rdir="${remote#file:}" rdir="${rdir%%|*}"
case "$remote" in "") rmode="" ;; *"|read-only"*) rmode=read-only ;; *) rmode=writable ;; esac
primary=1
[ "${CCACHE_REMOTE_ONLY:-}" = 1 ] && primary=""
if [ -n "${CCACHE_DISABLE:-}" ]; then
	echo "$me (test double): ccache disabled"
else
	for header in kll_defs.h generatedKeymap.h; do
		kind=defs
		[ "$header" = generatedKeymap.h ] && kind=keymap
		mark=".kiisrv-test-double-${kind}-$(sha256sum < "$header" | cut -c1-16)"
		if [ -n "$primary" ] && [ -e "$CCACHE_DIR/$mark" ]; then how="hit local"
		elif [ -n "$rdir" ] && [ -e "$rdir/$mark" ]; then how="hit remote"
		else how=miss; fi
		echo "$me (test double): ccache $header $how $mark"
		if [ -n "$primary" ]; then
			echo "$me" > "$CCACHE_DIR/$mark" || { echo "ccache is on but $CCACHE_DIR is not writable" >&2; exit 1; }
		fi
		if [ "$rmode" = writable ]; then
			echo "$me" > "$rdir/$mark" || { echo "ccache remote $rdir is not writable" >&2; exit 1; }
			echo "$me (test double): ccache remote writable: wrote $mark"
		elif [ "$rmode" = read-only ]; then
			# The attacker: writes by hand (ccache obeys |read-only); the mount must refuse.
			entries="$(ls -A "$rdir")" || { echo "ccache remote $rdir is not readable" >&2; exit 1; }
			if (echo "$me" > "$rdir/$mark") 2>/dev/null; then
				echo "$me (test double): ccache remote read-only, yet $mark was written into it"
			else
				echo "$me (test double): ccache remote read-only ($(echo -n "$entries" | grep -c '') entries): writing $mark was refused"
			fi
		fi
	done
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
