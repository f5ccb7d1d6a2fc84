#!/bin/sh
# Image build step, in the same RUN as the apt install (so the layer really shrinks):
# removes what Debian's ARM toolchain ships and no keyboard build reads.
#
#   slim-toolchain.sh
#
# gcc-arm-none-eabi and libnewlib-arm-none-eabi carry libgcc, crt files and newlib for
# every ARM multilib (33 of them, ~22 MB each in newlib). Every keyboard the controller
# sources build (Kinetis MK20DX128/MK20DX256, SAM4S8B/8C) compiles with
# `-mcpu=cortex-m4 -mthumb` and no float ABI (Lib/CMake/arm.cmake, kinetis.cmake,
# sam.cmake); v0.5.7 links with the same flags, v0.5.0 with `-mthumb` alone. Kept are
# the multilibs gcc selects for those flag sets (thumb/v7e-m/nofp, thumb/nofp) and its
# default one (".", which CMake's compiler identification links against). Measured with
# strace over a build of every keyboard script, from nothing and from warm trees, on
# v0.5.7 and v0.5.0: no other multilib is looked at (docs/controller-images.md). A
# keyboard with other flags (a Cortex-M4F hard-float build, say) adds its flag set to
# KEEP_MULTILIB_FLAGS.
#
# Also removed: gcc's plugin-development files, the C++ front end and LTO dump tool
# (the controller is C only and not built with -flto), documentation but copyright
# files, manual pages, non-English message catalogues, and apt's caches.
#
# Without the toolchain (the test double's empty TOOLCHAIN_PACKAGES) it does nothing.
# It checks what it keeps: each kept flag set still compiles and links a program.
set -eu

gcc=arm-none-eabi-gcc
if ! command -v "$gcc" >/dev/null 2>&1; then
	echo "slim-toolchain: no ${gcc}, nothing to do"
	exit 0
fi

# Flag sets whose multilib stays, separated by ";".
KEEP_MULTILIB_FLAGS="${KEEP_MULTILIB_FLAGS:--mcpu=cortex-m4 -mthumb;-mthumb}"

before="$(du -sxk /usr | cut -f1)"

# Where the multilib directories live: gcc's own (libgcc, crt*.o) and newlib's (libc,
# libm, crt0.o, specs), both resolved through the compiler, not assumed.
gcc_dir="$(dirname "$("$gcc" -print-libgcc-file-name)")"
newlib_dir="$(dirname "$(readlink -f "$("$gcc" -print-file-name=libc.a)")")"
[ -d "$gcc_dir" ] && [ -f "${newlib_dir}/libc.a" ] || {
	echo "slim-toolchain: cannot locate gcc's (${gcc_dir}) or newlib's (${newlib_dir}) libraries" >&2
	exit 1
}

keep=" . "
old_ifs="$IFS"
IFS=';'
for flags in $KEEP_MULTILIB_FLAGS; do
	IFS="$old_ifs"
	# shellcheck disable=SC2086
	dir="$("$gcc" $flags -print-multi-directory)"
	keep="${keep}${dir} "
	IFS=';'
done
IFS="$old_ifs"
echo "slim-toolchain: keeping multilibs:${keep}"

for dir in $("$gcc" -print-multi-lib | cut -d';' -f1); do
	case "$keep" in *" ${dir} "*) continue ;; esac
	for root in "$gcc_dir" "$newlib_dir"; do
		[ -e "${root}/${dir}" ] || continue
		rm -rf "${root:?}/${dir:?}"
		# Parents left empty (arm/, thumb/v7e-m+fp/ ...) go too.
		parent="$(dirname "$dir")"
		while [ "$parent" != . ]; do
			rmdir "${root}/${parent}" 2>/dev/null || break
			parent="$(dirname "$parent")"
		done
	done
done

# Plugin development headers and libcc1 plugins (for GDB's `compile`), the C++ compiler
# proper, the LTO compiler and dump tool: no keyboard build runs them.
rm -rf "${gcc_dir}/plugin" "${gcc_dir}/cc1plus" "${gcc_dir}/lto1" /usr/bin/arm-none-eabi-lto-dump

# Documentation (copyright files stay), manual and info pages, message catalogues
# other than English ones.
if [ -d /usr/share/doc ]; then
	find /usr/share/doc -mindepth 1 ! -type d ! -name copyright -delete
	find /usr/share/doc -mindepth 1 -type d -empty -delete
fi
rm -rf /usr/share/man/* /usr/share/info/*
if [ -d /usr/share/locale ]; then
	find /usr/share/locale -mindepth 1 -maxdepth 1 -type d ! -name 'en' ! -name 'en[_@]*' \
		-exec rm -rf {} +
fi

# apt's downloaded packages and binary caches (a base image without docker-clean keeps
# them); the lists are removed by the RUN itself.
apt-get clean
rm -f /var/cache/apt/*.bin

# What stays must still work: each kept flag set compiles and links a C program
# against its libgcc, newlib and crt files.
work="$(mktemp -d)"
printf '#include <string.h>\nint main(void) { char b[8]; memset(b, 1, sizeof b); return b[3]; }\n' \
	> "${work}/t.c"
IFS=';'
for flags in $KEEP_MULTILIB_FLAGS; do
	IFS="$old_ifs"
	# shellcheck disable=SC2086
	"$gcc" $flags -Os --specs=nosys.specs -o "${work}/t.elf" "${work}/t.c"
	IFS=';'
done
IFS="$old_ifs"
rm -rf "$work"

echo "slim-toolchain: /usr went from $((before / 1024)) MB to $(($(du -sxk /usr | cut -f1) / 1024)) MB"
