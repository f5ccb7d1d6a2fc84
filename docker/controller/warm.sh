#!/bin/bash
# Image build step: the warm trees that builds start from (build.sh).
#
#   warm.sh <warm list>
#
# For each line of the list (script, Layout, canonical maps: docker/controller/warm.list,
# made by `kiisrv warm-list` from the stock layouts), configures and compiles the
# keyboard at the fixed path requests build at, with placeholder layers named as
# requests' layers are (layer-0 ...), and keeps the tree in
# $WARM_DIR/<script stem>/<configure key>/. The key is that of the configure the cmake
# wrapper recorded (bin/cmake, warmtree.py): build.sh reuses a tree only for a request
# whose configure has the same key. A configuration that does not build here is left
# cold, not fatal: its requests then build from nothing, as before.
set -euo pipefail
list="$1"
WARMTREE=/usr/local/lib/kiisrv/warmtree.py
# The Dockerfile's build arguments are in the environment of RUN, and gone when a
# request builds: a configure recorded with them would never have a request's key.
unset TAG CONTROLLER_URL KEYBOARDS_EXTRA TOOLCHAIN_PACKAGES KLL_SPEC
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

# configure_key <script> <build dir>: the key of the configure this script would run
# here (the cmake wrapper's probe, warmtree.py), without configuring anything.
configure_key() {
	local probe="${layers}/probe"
	(cd "${CONTROLLER_DIR}/Keyboards" && KIISRV_CONFIGURE_PROBE="$probe" \
		DefaultMapOverride="$CANON_DEFAULT" PartialMapsExpandedOverride="$CANON_PARTIAL" \
		"./$1" -c "$CONTROLLER_DIR" -o "$2") < /dev/null > /dev/null 2>&1
	python3 "$WARMTREE" key "$probe" 2>/dev/null
}

while IFS=$'\t' read -r script variant default_map partial_maps; do
	case "$script" in ''|'#'*) continue ;; esac
	[ "$variant" = - ] && variant=""
	[ "$partial_maps" = - ] && partial_maps=""
	stem="${script%.bash}"
	[ -f "${CONTROLLER_DIR}/Keyboards/${script}" ] || { echo "no ${script} in this release"; continue; }
	case "$stem" in
		*-l|*-r) split=1 ;;
		*) split="" ;;
	esac
	function_map="${default_map%% *}"
	rm -rf "${layers:?}"/* "${BUILD_ROOT:?}/${stem}"
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
	mkdir -p "${BUILD_ROOT}/${stem}"
	key="$(configure_key "$script" "${BUILD_ROOT}/${stem}")"
	if [ -z "$key" ]; then
		echo "warning: ${script} (${variant:-default}, ${MAPS}) did not reach its configure; left cold"
		continue
	fi
	if [ -d "${WARM_DIR}/${stem}/${key}" ]; then
		echo "warm tree ${stem}/${key}: ${variant:-default} ${MAPS} (same configure as before)"
		continue
	fi
	cp "${layers}"/*.kll "${BUILD_ROOT}/${stem}/"
	if (cd "${CONTROLLER_DIR}/Keyboards" && "./${script}" -c "$CONTROLLER_DIR" -o "${BUILD_ROOT}/${stem}") \
		< /dev/null > "${layers}/build.log" 2>&1; then
		# Every request relinks: the firmware and the link's outputs would only be
		# dead weight in the image, and a stale firmware is never there to be shipped.
		rm -f "${BUILD_ROOT}/${stem}"/kiibohd.* "${BUILD_ROOT}/${stem}/link.map"
		built="$(python3 "$WARMTREE" key "${BUILD_ROOT}/${stem}/.kiisrv-configure")"
		if [ "$built" != "$key" ]; then
			echo "error: ${script} configured with key ${built}, its probe said ${key}:" >&2
			python3 "$WARMTREE" diff "${layers}/probe" "${BUILD_ROOT}/${stem}/.kiisrv-configure" >&2
			exit 1
		fi
		mkdir -p "${WARM_DIR}/${stem}"
		mv "${BUILD_ROOT}/${stem}" "${WARM_DIR}/${stem}/${key}"
		echo "warm tree ${stem}/${key}: ${variant:-default} ${MAPS}"
	else
		tail -n 20 "${layers}/build.log"
		echo "warning: ${script} (${variant:-default}, ${MAPS}) did not build; its requests build cold"
	fi
done < "$list"
unset Layout
rm -rf "$layers" "${BUILD_ROOT:?}" /tmp/*hid-io-layouts*
if command -v ccache >/dev/null; then ccache --show-stats | head -n 5; fi
rm -rf "$CCACHE_DIR"
