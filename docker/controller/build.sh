#!/bin/bash
# kiisrv controller entrypoint: one firmware build (shared/spec/BUILD_CONTRACT.md).
#
#   build.sh <keyboard script> <kll dir name> <zip name>
#
# Reads the .kll files (and the layout JSON) from $IN_DIR/<kll dir name> and leaves
# $OUT_DIR/<zip name>, or <zip stem>_error.zip when the build fails. Environment:
# DefaultMapOverride, PartialMapsExpandedOverride, Layout, SPLIT_KEYBOARD=1 for boards
# built as two halves; KIISRV_WARM=0 builds from nothing. Exits with the build's status.
#
# Why a build takes a second or two: the image holds warm trees (warm.sh), each stock
# layout (and generic ones) configured and compiled at the fixed path used here, with
# the date pinned. When the request's maps (renamed layer-<n>, env.sh) match a warm
# tree's configure, the tree most like the request is copied and ninja alone runs: it
# regenerates the KLL and recompiles what a changed generated header reaches (bin/kll
# keeps unchanged ones' timestamps, and of the objects including a changed kll_defs.h
# only those that used a changed macro: objects.py prune).
# Otherwise the keyboard script runs as usual (from the nearest warm tree when there is
# one, so that only CMake's configure is added). Either way the firmware is the same.
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
KLL_DIR="${IN_DIR}/${kll_name}"
export HOME="${HOME:-/tmp}"
[ -w "$HOME" ] || export HOME=/tmp
# shellcheck source=docker/controller/env.sh
source /usr/local/lib/kiisrv/env.sh

RESULT="$(mktemp -d /tmp/kiisrv-result.XXXXXX)"  # what goes into the zip
mkdir -p "${RESULT}/kll" "${RESULT}/log"
LOG="${RESULT}/log/build.log"
say() { echo "$*" | tee -a "$LOG"; }

say " ========== STARTING BUILD ========== "
say " @@@@@ Script=${script}"
say " @@@@@ DefaultMapOverride=${DefaultMapOverride:-}"
say " @@@@@ PartialMapsExpandedOverride=${PartialMapsExpandedOverride:-}"
say " @@@@@ Layout=${Layout:-}"
ls -l "${KLL_DIR}" 2>&1 | tee -a "$LOG"
say "------------------------"

link_kll_cache
# No compile cache is kept from one build to the next (src/kiisrv/build/containers.py sets
# CCACHE_DISABLE=1): the warm trees in the image are what makes a build fast.
if [ -n "${CCACHE_DISABLE:-}" ]; then say " @@@@@ Ccache=disabled"; fi

inputs=("${KLL_DIR}"/*.kll)
[ "${#inputs[@]}" -gt 0 ] || { say "no input files in ${KLL_DIR}"; exit 66; }
canonical_maps "$KLL_DIR"
say " @@@@@ Maps=${MAPS}"
# What the manifest names of the image (src/kiisrv/recipe/manifest.py): its compiler and
# its KLL compiler, as recorded when the image was built.
say " @@@@@ Toolchain=$(arm-none-eabi-gcc -dumpversion 2>/dev/null || echo none)"
say " @@@@@ KLL=$(tr -c 'A-Za-z0-9._\n-' _ < "${WARM_DIR}/kll-probes/version" 2>/dev/null | head -n1 || echo unknown)"

now_ms() { date +%s%3N; }

# ninja_phases <.ninja_log> <lines before this build>: where this build's time went.
ninja_phases() {
	tail -n "+$(($2 + 1))" "$1" | awk -F'\t' '
		$4 ~ /generatedKeymap\.h$/ { kll = $2 - $1 }
		$4 ~ /\.obj$/ { n++; if (!s || $1 < s) s = $1; if ($2 > e) e = $2 }
		$4 ~ /\.elf$/ { link = $2 - $1 }
		END { printf " @@@@@ Phases: kll %d ms, %d compiles in %d ms, link %d ms\n", kll, n, e - s, link }'
}

build_one() { # <script> <dir for its outputs>: one keyboard script, in its fixed folder
	local script="$1" out="$2" stem="${1%.bash}" how=cold tree="" differs="" src status probe
	local dir="${BUILD_ROOT}/${stem}"
	if [ "${KIISRV_WARM:-1}" != 0 ]; then
		# What this request's configure would be (the cmake wrapper's probe: the script
		# stops at its cmake call), and the tree configured the same way (warmtree.py).
		probe="$(mktemp /tmp/kiisrv-probe.XXXXXX)"
		mkdir -p "$dir"
		(cd "${CONTROLLER_DIR}/Keyboards" && KIISRV_CONFIGURE_PROBE="$probe" \
			DefaultMapOverride="$CANON_DEFAULT" PartialMapsExpandedOverride="$CANON_PARTIAL" \
			"./${script}" -c "$CONTROLLER_DIR" -o "$dir") < /dev/null > /dev/null 2>&1
		if [ -s "$probe" ]; then
			# The request's layers as the tree names them: of the trees configured alike,
			# the one most like them is copied (warmtree.py).
			mine="$(mktemp -d /tmp/kiisrv-layers.XXXXXX)"
			for src in "${!CANON[@]}"; do
				[[ "${CANON[$src]}" == layer-* ]] && cp -- "${KLL_DIR}/${src}.kll" "${mine}/${CANON[$src]}.kll"
			done
			IFS=$'\t' read -r how tree differs < <(python3 "$WARMTREE" \
				pick "$probe" "${WARM_DIR}/${stem}" "$mine" 2>/dev/null || echo cold)
			rm -rf "$mine"
		fi
		rm -f "$probe"
		rm -rf "$dir"
		[ -n "$tree" ] && tree="${tree%/}/"
	fi
	local t0 logged=0
	t0="$(now_ms)"
	mkdir -p "$dir"
	[ -n "$tree" ] && cp -a "${tree}." "$dir/"
	rm -f "$dir"/layer-*.kll "${dir}/.kiisrv-kll-ok"
	# Copied, not linked: newer than the tree's outputs, so ninja regenerates the KLL.
	for src in "${!CANON[@]}"; do
		cp -- "${KLL_DIR}/${src}.kll" "${dir}/${CANON[$src]}.kll"
	done
	echo " @@@@@ Build=${how}${tree:+ from ${tree%/}}${differs:+ (differs in ${differs})} in ${dir}" | tee "${out}/script.log"
	echo " @@@@@ Prepared in $(($(now_ms) - t0)) ms" | tee -a "${out}/script.log"
	if [ "$how" = warm ]; then
		[ -f "${dir}/.ninja_log" ] && logged="$(wc -l < "${dir}/.ninja_log")"
		# The KLL step first, then the rest: bin/kll may remove objects a changed
		# kll_defs.h reaches (objects.py prune), and ninja plans a build before it runs,
		# so objects removed during the run it started would be linked, not rebuilt.
		(cd "$dir" && ninja kll_defs.h && ninja) 2>&1 | tee -a "${out}/script.log"
		status="${PIPESTATUS[0]}"
		ninja_phases "${dir}/.ninja_log" "$logged" | tee -a "${out}/script.log"
	else
		(cd "${CONTROLLER_DIR}/Keyboards" \
			&& DefaultMapOverride="$CANON_DEFAULT" PartialMapsExpandedOverride="$CANON_PARTIAL" \
				"./${script}" -c "$CONTROLLER_DIR" -o "$dir") 2>&1 | tee -a "${out}/script.log"
		status="${PIPESTATUS[0]}"
	fi
	# A warm tree holds the outputs of its own layers: only what this build made may
	# go into the zip. Firmware only from a success; the generated headers when the
	# KLL step of this build succeeded (bin/kll leaves .kiisrv-kll-ok).
	if [ "$status" -eq 0 ]; then
		for src in kiibohd.dfu.bin kiibohd.secure.dfu.bin; do
			[ -f "${dir}/${src}" ] && cp -- "${dir}/${src}" "${out}/"
		done
	fi
	if [ "$status" -eq 0 ] || [ -f "${dir}/.kiisrv-kll-ok" ]; then
		for src in kll.json generatedKeymap.h kll_defs.h; do
			[ -f "${dir}/${src}" ] && cp -- "${dir}/${src}" "${out}/"
		done
	fi
	return "$status"
}

if [ "${SPLIT_KEYBOARD:-}" = "1" ]; then
	mkdir -p "${RESULT}/.left" "${RESULT}/.right"
	build_one "${script%.bash}-l.bash" "${RESULT}/.left" &
	pid_left=$!
	build_one "${script%.bash}-r.bash" "${RESULT}/.right" &
	pid_right=$!
	wait "$pid_left"; status=$?
	wait "$pid_right"; status_right=$?
	[ "$status" -eq 0 ] && status=$status_right
	for side in left right; do
		cat "${RESULT}/.${side}/script.log" >> "$LOG"
		for f in kiibohd.dfu.bin kiibohd.secure.dfu.bin kll.json; do
			[ -f "${RESULT}/.${side}/$f" ] && mv -- "${RESULT}/.${side}/$f" "${RESULT}/${side}_$f"
		done
		for f in generatedKeymap.h kll_defs.h; do
			[ -f "${RESULT}/.${side}/$f" ] && mv -- "${RESULT}/.${side}/$f" "${RESULT}/log/${side}_$f"
		done
		rm -rf "${RESULT:?}/.${side}"
	done
else
	build_one "$script" "$RESULT"
	status=$?
	cat "${RESULT}/script.log" >> "$LOG"
	rm -f "${RESULT}/script.log"
	for f in generatedKeymap.h kll_defs.h; do
		[ -f "${RESULT}/$f" ] && mv -- "${RESULT}/$f" "${RESULT}/log/$f"
	done
fi
say "Build Result: ${status}"

out="${zip_name}"
[ "$status" -ne 0 ] && out="${zip_name%.zip}_error.zip"

say "------------------------"
say " @@@@@ Creating build zip ${out}"
# The request's files under their own names (not layer-<n>), at the root and in kll/.
cp -- "${inputs[@]}" "${RESULT}/"
cp -- "${inputs[@]}" "${RESULT}/kll/"
cp -- "${KLL_DIR}"/*.json "${RESULT}/" 2>/dev/null
if [ "$status" -eq 0 ]; then
	say " >>> Build Completed [OK]"
else
	say " >>> Build Completed [ERROR ${status}]"
fi
cd "${RESULT}" || exit 70
# Written beside the final name and renamed, so a half-written zip is never seen.
zip -q -r "${OUT_DIR}/.${out}.partial" -- *.kll *.dfu.bin *.json kll log \
	&& mv -- "${OUT_DIR}/.${out}.partial" "${OUT_DIR}/${out}" \
	|| { echo "could not write ${out}" >&2; [ "$status" -eq 0 ] && status=73; }
exit "$status"
