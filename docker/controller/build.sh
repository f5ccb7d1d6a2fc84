#!/bin/bash
# kiisrv controller entrypoint: one firmware build (shared/spec/BUILD_CONTRACT.md).
#
#   build.sh <keyboard script> <kll dir name> <zip name>
#
# Reads the .kll files (and the layout JSON) from $IN_DIR/<kll dir name>, builds in a
# fresh folder under /tmp, and leaves $OUT_DIR/<zip name>, or <zip stem>_error.zip when
# the build fails. Environment: DefaultMapOverride, PartialMapsExpandedOverride, Layout,
# SPLIT_KEYBOARD=1 for boards built as two halves. Exits with the build's status.
set -uo pipefail
shopt -s nullglob

if [ "$#" -ne 3 ]; then
	echo "usage: build.sh <keyboard script> <kll dir name> <zip name>" >&2
	exit 64
fi
script="$1" kll_name="$2" zip_name="$3"
[[ "$script" =~ ^[A-Za-z0-9_.-]+\.bash$ ]] || { echo "bad script name: $script" >&2; exit 64; }
[[ "$kll_name" =~ ^[A-Za-z0-9_-]+$ ]] || { echo "bad kll dir name: $kll_name" >&2; exit 64; }
[[ "$zip_name" =~ ^[A-Za-z0-9_.-]+\.zip$ ]] || { echo "bad zip name: $zip_name" >&2; exit 64; }

IN_DIR="${IN_DIR:-/mnt/config}"
OUT_DIR="${OUT_DIR:-/mnt/builds}"
CONTROLLER_DIR="${CONTROLLER_DIR:-/controller}"
KLL_DIR="${IN_DIR}/${kll_name}"
BUILD_DIR="$(mktemp -d /tmp/kiisrv-build.XXXXXX)"
export HOME="${HOME:-/tmp}"
[ -w "$HOME" ] || export HOME=/tmp

echo " ========== STARTING BUILD ========== "
echo " @@@@@ Script=${script}"
echo " @@@@@ DefaultMapOverride=${DefaultMapOverride:-}"
echo " @@@@@ PartialMapsExpandedOverride=${PartialMapsExpandedOverride:-}"
echo " @@@@@ Layout=${Layout:-}"
ls -l "${KLL_DIR}"
echo "------------------------"

# Builds run with a tmpfs /tmp: the KLL compiler finds its layout cache there.
for f in /kll_cache/*; do ln -sfn "$f" /tmp/; done
export PATH="/usr/lib/ccache:$PATH"
# A ccache volume made by an older image (root-owned) would fail every build: go without.
if [ -n "${CCACHE_DIR:-}" ] && ! touch "${CCACHE_DIR}/.kiisrv-write-test" 2>/dev/null; then
	echo "warning: ${CCACHE_DIR} is not writable by uid $(id -u); building without ccache"
	export CCACHE_DISABLE=1
fi

# The KLL compiler looks for the .kll files in the build dir. Copy: the input is read-only.
cp -- "${KLL_DIR}"/* "${BUILD_DIR}/" || { echo "no input files in ${KLL_DIR}" >&2; exit 66; }

cd "${CONTROLLER_DIR}/Keyboards" || exit 70

run_script() { # <script> <build dir>
	echo " Build Dir: $2"
	pipenv run "./$1" -c "${CONTROLLER_DIR}" -o "$2" 2>&1 | tee "$2/build.log"
	return "${PIPESTATUS[0]}"
}

if [ "${SPLIT_KEYBOARD:-}" = "1" ]; then
	for side in left right; do
		mkdir -p "${BUILD_DIR}/${side}"
		cp "${BUILD_DIR}"/*.kll "${BUILD_DIR}/${side}/"
	done
	run_script "${script%.bash}-l.bash" "${BUILD_DIR}/left" &
	pid_left=$!
	run_script "${script%.bash}-r.bash" "${BUILD_DIR}/right" &
	pid_right=$!
	wait "$pid_left"; status=$?
	wait "$pid_right"; status_right=$?
	[ "$status" -eq 0 ] && status=$status_right
	for side in left right; do
		for f in kiibohd.dfu.bin kiibohd.secure.dfu.bin kll.json generatedKeymap.h kll_defs.h; do
			[ -f "${BUILD_DIR}/${side}/$f" ] && cp "${BUILD_DIR}/${side}/$f" "${BUILD_DIR}/${side}_$f"
		done
	done
	cat "${BUILD_DIR}/left/build.log" "${BUILD_DIR}/right/build.log" > "${BUILD_DIR}/build.log"
else
	run_script "${script}" "${BUILD_DIR}"
	status=$?
fi
echo "Build Result: ${status}"

out="${zip_name}"
[ "$status" -ne 0 ] && out="${zip_name%.zip}_error.zip"

echo "------------------------"
echo " @@@@@ Creating build zip ${out}"
cd "${BUILD_DIR}" || exit 70
mkdir -p kll log
cp -- *.kll kll/
mv -- *.log *.h log/ 2>/dev/null
# Written beside the final name and renamed, so a half-written zip is never seen.
zip -q -r "${OUT_DIR}/.${out}.partial" -- *.kll *.dfu.bin *.json kll log \
	&& mv -- "${OUT_DIR}/.${out}.partial" "${OUT_DIR}/${out}" \
	|| { echo "could not write ${out}" >&2; [ "$status" -eq 0 ] && status=73; }

if [ "$status" -eq 0 ]; then
	echo " >>> Build Completed [OK]"
else
	echo " >>> Build Completed [ERROR ${status}]"
fi
exit "$status"
