#!/bin/bash
# Image build step: the warm trees that builds start from (build.sh).
#
#   warm.sh "<keyboard scripts>" "<layer counts>" "<partial map prefix>"
#
# For each script and each layer count, configures and compiles the keyboard at the
# fixed path requests build at, with placeholder layers named as requests' layers are
# (layer-0 ...), and keeps the tree in $WARM_DIR/<script stem>/<count>/ with the maps it
# was configured for. A keyboard that does not build here is left cold, not fatal:
# its requests then build from nothing, as before.
set -euo pipefail
scripts="$1" counts="$2" partial_prefix="${3:-}"
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

# stock_layer <script> <n> <function map>: the keyboard's own layer n (its DefaultMap or
# PartialMaps[n] files, as the script names them), so the warm tree is configured like a
# real layout (KType's stock layers, for one, need the animations its layer 0 defines).
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

for script in $scripts; do
	stem="${script%.bash}"
	case "$stem" in
		ergodox*) function_map="infinity_ergodox/lcdFuncMap" split=1 ;;
		*) function_map="stdFuncMap" split="" ;;
	esac
	for count in $counts; do
		rm -rf "${layers:?}"/* "${BUILD_ROOT:?}/${stem}"
		partial=""
		for ((n = 0; n < count; n++)); do
			stock_layer "$script" "$n" "$function_map" > "${layers}/layer-${n}.kll"
			[ "$n" -gt 0 ] && partial+="${partial:+;}${partial_prefix:+${partial_prefix} }layer-${n}"
		done
		export DefaultMapOverride="${function_map} layer-0" PartialMapsExpandedOverride="$partial" \
			SPLIT_KEYBOARD="$split"
		canonical_maps "$layers"
		mkdir -p "${BUILD_ROOT}/${stem}"
		cp "${layers}"/*.kll "${BUILD_ROOT}/${stem}/"
		if (cd "${CONTROLLER_DIR}/Keyboards" && "./${script}" -c "$CONTROLLER_DIR" -o "${BUILD_ROOT}/${stem}") \
			> "${layers}/build.log" 2>&1; then
			# Every request relinks: the firmware and the link's outputs would only be
			# dead weight in the image, and a stale firmware is never there to be shipped.
			rm -f "${BUILD_ROOT}/${stem}"/kiibohd.* "${BUILD_ROOT}/${stem}/link.map"
			mkdir -p "${WARM_DIR}/${stem}"
			mv "${BUILD_ROOT}/${stem}" "${WARM_DIR}/${stem}/${count}"
			printf '%s' "$MAPS" > "${WARM_DIR}/${stem}/${count}/kiisrv-maps"
			echo "warm tree ${stem}/${count}: ${MAPS}"
		else
			tail -n 20 "${layers}/build.log"
			echo "warning: ${script} with ${count} layer(s) did not build; its requests build cold"
		fi
	done
done
rm -rf "$layers" "${BUILD_ROOT:?}" /tmp/*hid-io-layouts*
if command -v ccache >/dev/null; then ccache --show-stats | head -n 5; fi
rm -rf "$CCACHE_DIR"
