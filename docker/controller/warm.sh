#!/bin/bash
# Image build step: the warm trees that builds start from (build.sh).
#
#   warm.sh <warm list> [<stock inputs folder>]
#
# Two kinds of tree, each configured *and compiled* at the fixed path requests build
# at, then kept in $WARM_DIR/<script stem>/<configure key>/<label>/:
# - the stock layouts themselves (<stock inputs folder>/<label>/: their .kll files and
#   build environment, as `kiisrv warm-inputs` writes them from the layouts folder): a
#   one-key change of a stock layout starts from that very layout;
# - generic trees (docker/controller/warm.list: 1-3 layers of each script's default,
#   with the keyboard's own stock layers as placeholder content), label "generic", for
#   layouts started from scratch.
# The key is that of the configure the cmake wrapper recorded (bin/cmake, warmtree.py):
# build.sh reuses a tree only for a request whose configure has the same key, and of
# those, the one whose layers are most like the request's. Each tree also records the
# macros each object's preprocessing used (objects.py usage: what a changed kll_defs.h
# reaches), and its objects lose their debug sections (8.3 MB of KType's 8.7: never
# in the firmware, which is the loadable sections only; timestamps kept for ninja).
# A configuration that does not build here is left cold, not fatal: its requests then
# build from nothing, as before.
set -euo pipefail
list="$1" inputs="${2:-}"
# The Dockerfile's build arguments are in the environment of RUN, and gone when a
# request builds: a configure recorded with them would never have a request's key.
unset TAG CONTROLLER_URL KEYBOARDS_EXTRA TOOLCHAIN_PACKAGES KLL_SPEC LAYOUTS_SOURCE LAYOUTS_REV
# shellcheck source=docker/controller/env.sh
source /usr/local/lib/kiisrv/env.sh
# A ccache of its own, for the trees of one keyboard to share; not kept in the image.
CCACHE_DIR="$(mktemp -d)"
export CCACHE_DIR KIISRV_WARMING=1
link_kll_cache
layers="$(mktemp -d)"
stock_dir="$(python3 -m kll --path 2>/dev/null || true)/layouts"
# What bin/kll answers to CMake's probes, recorded once (the compiler does not change).
mkdir -p "${WARM_DIR}/kll-probes"
(cd "$CONTROLLER_DIR" \
	&& python3 -m kll --version > "${WARM_DIR}/kll-probes/version" \
	&& python3 -m kll --path > "${WARM_DIR}/kll-probes/path" \
	&& python3 -m kll --layout-cache-path > "${WARM_DIR}/kll-probes/layout-cache-path") \
	|| rm -rf "${WARM_DIR}/kll-probes"
objcopy="$(command -v arm-none-eabi-objcopy || true)"
readelf="$(command -v arm-none-eabi-readelf || true)"

# stock_layer <script> <n> <function map>: the keyboard's own layer n (its DefaultMap or
# PartialMaps[n] files, as the script names them), so a generic tree is configured like
# a real layout (KType's stock layers, for one, need the animations its layer 0 defines).
stock_layer() {
	local line word found=""
	if [ "$2" -eq 0 ]; then
		line="$(sed -n 's/^DefaultMap="\(.*\)"/\1/p' "${CONTROLLER_DIR}/Keyboards/$1" | head -n1)"
	else
		line="$(sed -n "s/^PartialMaps\[$2\]=\"\(.*\)\"/\1/p" "${CONTROLLER_DIR}/Keyboards/$1" | head -n1)"
	fi
	printf 'Name = "warm";\nLayout = "layer-%d";\n\n' "$2"
	for word in $line; do
		[ "$word" = "$3" ] || [ "$word" = stdFuncMap ] && continue
		if [ -f "${stock_dir}/${word}.kll" ]; then
			cat "${stock_dir}/${word}.kll"
			echo
			found=1
		fi
	done
	[ -n "$found" ] || echo "# no stock map for layer $2"
}

# configure_key <script> <build dir>: the key of the configure this script would run
# here (the cmake wrapper's probe, warmtree.py), without configuring anything.
configure_key() {
	local probe="${layers}/probe"
	(cd "${CONTROLLER_DIR}/Keyboards" && KIISRV_CONFIGURE_PROBE="$probe" \
		DefaultMapOverride="$CANON_DEFAULT" PartialMapsExpandedOverride="$CANON_PARTIAL" \
		"./$1" -c "$CONTROLLER_DIR" -o "$2") < /dev/null > /dev/null 2>&1
	python3 "$WARMTREE" key "$probe" 2>/dev/null
}

# warm <script> <label>: configures and compiles the layer files in $layers (named
# layer-<n>.kll) with the script, and keeps the tree as <stem>/<key>/<label>.
warm() {
	local script="$1" label="$2" stem="${1%.bash}" key built tree other
	[ -f "${CONTROLLER_DIR}/Keyboards/${script}" ] || { echo "no ${script} in this release"; return 0; }
	rm -rf "${BUILD_ROOT:?}/${stem}"
	mkdir -p "${BUILD_ROOT}/${stem}"
	key="$(configure_key "$script" "${BUILD_ROOT}/${stem}")"
	if [ -z "$key" ]; then
		echo "warning: ${script} ${label} (${MAPS}) did not reach its configure; left cold"
		return 0
	fi
	for other in "${WARM_DIR}/${stem}/${key}"/*/; do
		if [ -d "$other" ] && diff -q <(cat "${layers}"/layer-*.kll) <(cat "${other}"layer-*.kll) >/dev/null 2>&1; then
			echo "warm tree ${stem}/${key}/${label}: same configure and layers as ${other}; not kept twice"
			return 0
		fi
	done
	cp "${layers}"/layer-*.kll "${BUILD_ROOT}/${stem}/"
	if ! (cd "${CONTROLLER_DIR}/Keyboards" \
		&& DefaultMapOverride="$CANON_DEFAULT" PartialMapsExpandedOverride="$CANON_PARTIAL" \
			"./${script}" -c "$CONTROLLER_DIR" -o "${BUILD_ROOT}/${stem}") \
		< /dev/null > "${layers}/build.log" 2>&1; then
		tail -n 20 "${layers}/build.log"
		echo "warning: ${script} ${label} (${MAPS}) did not build; its requests build cold"
		return 0
	fi
	tree="${BUILD_ROOT}/${stem}"
	# Every request relinks: the firmware and the link's outputs would only be dead
	# weight in the image, and a stale firmware is never there to be shipped.
	rm -f "${tree}"/kiibohd.* "${tree}/link.map"
	built="$(python3 "$WARMTREE" key "${tree}/.kiisrv-configure")"
	if [ "$built" != "$key" ]; then
		echo "error: ${script} configured with key ${built}, its probe said ${key}:" >&2
		python3 "$WARMTREE" diff "${layers}/probe" "${tree}/.kiisrv-configure" >&2
		exit 1
	fi
	if [ -f "${tree}/compile_commands.json" ]; then
		python3 "$OBJECTS" usage "$tree" > /dev/null
	fi
	if [ -n "$objcopy" ] && [ -n "$readelf" ]; then
		# Debug sections emptied, not stripped: stripping renumbers sections, and the
		# link names its veneers by those numbers (objects.py, "Smaller objects").
		python3 "$OBJECTS" shrink "$tree" "$objcopy" "$readelf" > /dev/null
	fi
	mkdir -p "${WARM_DIR}/${stem}/${key}"
	mv "$tree" "${WARM_DIR}/${stem}/${key}/${label}"
	echo "warm tree ${stem}/${key}/${label}: ${Layout:-default} ${MAPS}"
}

# -- the stock layouts -----------------------------------------------------------------
if [ -n "$inputs" ] && [ -d "$inputs" ]; then
	for input in "$inputs"/*/; do
		label="$(basename "$input")"
		rm -rf "${layers:?}"/*
		unset Layout DefaultMapOverride PartialMapsExpandedOverride SPLIT_KEYBOARD
		while IFS='=' read -r name value; do
			case "$name" in
				Layout|DefaultMapOverride|PartialMapsExpandedOverride|SPLIT_KEYBOARD) export "$name=$value" ;;
			esac
		done < "${input}env"
		canonical_maps "$input"
		for src in "${!CANON[@]}"; do
			cp -- "${input}${src}.kll" "${layers}/${CANON[$src]}.kll"
		done
		script="$(sed -n 's/^script=//p' "${input}script")"
		if [ "${SPLIT_KEYBOARD:-}" = 1 ]; then
			warm "${script%.bash}-l.bash" "$label"
			warm "${script%.bash}-r.bash" "$label"
		else
			warm "$script" "$label"
		fi
	done
fi
unset Layout DefaultMapOverride PartialMapsExpandedOverride SPLIT_KEYBOARD

# -- generic trees -----------------------------------------------------------------------
while IFS=$'\t' read -r script variant default_map partial_maps; do
	case "$script" in ''|'#'*) continue ;; esac
	[ "$variant" = - ] && variant=""
	[ "$partial_maps" = - ] && partial_maps=""
	stem="${script%.bash}"
	case "$stem" in
		*-l|*-r) split=1 ;;
		*) split="" ;;
	esac
	function_map="${default_map%% *}"
	rm -rf "${layers:?}"/*
	count=0
	for word in $default_map ${partial_maps//;/ }; do
		case "$word" in layer-*) count=$((count + 1)) ;; esac
	done
	for ((n = 0; n < count; n++)); do
		stock_layer "$script" "$n" "$function_map" > "${layers}/layer-${n}.kll"
	done
	if [ -n "$variant" ]; then export Layout="$variant"; else unset Layout; fi
	export DefaultMapOverride="$default_map" PartialMapsExpandedOverride="$partial_maps" \
		SPLIT_KEYBOARD="$split"
	canonical_maps "$layers"
	warm "$script" generic
done < "$list"
unset Layout
rm -rf "$layers" "${BUILD_ROOT:?}" /tmp/*hid-io-layouts*
if command -v ccache >/dev/null; then ccache --show-stats | head -n 5; fi
rm -rf "$CCACHE_DIR"
