# Sourced by build.sh (each request) and warm.sh (image build): one environment for both,
# so that a build started from a warm tree and one started from nothing see the same
# paths, names and date, and produce the same firmware bytes.
# shellcheck shell=bash

CONTROLLER_DIR="${CONTROLLER_DIR:-/controller}"
# Fixed, because the build folder's path ends up in the compiler flags, the ninja files
# and the debug info: a warm tree is only reusable at the path it was built at.
BUILD_ROOT=/tmp/kiisrv-build
WARM_DIR="${WARM_DIR:-/warm}"

# The keyboard scripts want an active pipenv; activating the environment directly saves
# `pipenv run` (0.3 s a build). The date wrapper comes first (see kiisrv-date).
export VIRTUAL_ENV="${CONTROLLER_DIR}/Keyboards/.venv" PIPENV_ACTIVE=1
export PATH="/usr/local/lib/kiisrv/bin:/usr/lib/ccache:${VIRTUAL_ENV}/bin:${PATH}"
# buildvars.h carries the configure-time date; pinned to the release's commit date, it
# stops making every object (and every firmware) unique.
KIISRV_BUILD_DATE="$(sed -n 's/.*"date": *"\([^"]*\)".*/\1/p' "${CONTROLLER_DIR}/kiisrv-version.json" 2>/dev/null)"
export KIISRV_BUILD_DATE

# The KLL compiler iterates over sets of strings in places: with Python's per-process
# hash seed, the same layout can come out with its tables in another order (a different
# generatedKeymap.h, different firmware bytes, a ccache miss). A fixed seed makes it
# deterministic.
export PYTHONHASHSEED=0

# ccache serves the warm trees' compiles while the image is built (warm.sh; a request's
# build runs with CCACHE_DISABLE=1). Objects are compiled with -ggdb3, so every macro of
# the generated kll_defs.h is in every object: ccache can only hit on identical headers,
# and running the preprocessor on a miss (its default) would be wasted. Depend mode
# hashes the compiler's own -MD.
export CCACHE_DEPEND=1

# The KLL compiler through kiisrv's wrapper (bin/kll): cached probes, and unchanged
# generated headers keep their timestamps. The keyboard scripts pass CMakeExtraArgs on.
export CMakeExtraArgs="-DKLL_EXECUTABLE=/usr/local/lib/kiisrv/bin/kll -DKLL_WORKING_DIRECTORY=${CONTROLLER_DIR}"

# The KLL compiler finds its layout cache as /tmp/*hid-io-layouts*.
link_kll_cache() {
	local f
	for f in /kll_cache/*hid-io-layouts*; do
		if [ -e "$f" ]; then ln -sfn "$f" /tmp/; fi
	done
}

# canonical_maps <kll dir>: the request's own maps are renamed layer-0, layer-1, ... in
# the order DefaultMapOverride then PartialMapsExpandedOverride name them; other maps
# (stdFuncMap, infinity_ergodox/lcdFuncMap) keep their names. Layer names are compiled
# into the firmware, so requests only share a warm tree when they share these names.
# Sets CANON (request stem -> layer-<n>), CANON_DEFAULT, CANON_PARTIAL and MAPS.
canonical_maps() {
	local dir="$1" word layer out
	local -a layers=()
	declare -gA CANON=()
	CANON_DEFAULT="" CANON_PARTIAL=""
	for word in ${DefaultMapOverride:-}; do
		_canon_word "$dir" "$word"
		CANON_DEFAULT+="${CANON_DEFAULT:+ }${REPLY}"
	done
	IFS=';' read -r -a layers <<< "${PartialMapsExpandedOverride:-}"
	for layer in "${layers[@]}"; do
		out=""
		for word in $layer; do
			_canon_word "$dir" "$word"
			out+="${out:+ }${REPLY}"
		done
		CANON_PARTIAL+="${CANON_PARTIAL:+;}${out}"
	done
	# ";" is how the server says "no partial maps at all": an empty override would make
	# the keyboard script fall back to its own stock layers.
	if [ -z "$CANON_PARTIAL" ] && [ -n "${PartialMapsExpandedOverride:-}" ]; then
		CANON_PARTIAL=";"
	fi
	MAPS="${CANON_DEFAULT}|${CANON_PARTIAL}"
}

_canon_word() {
	if [ -f "$1/$2.kll" ]; then
		[ -n "${CANON[$2]+x}" ] || CANON[$2]="layer-${#CANON[@]}"
		REPLY="${CANON[$2]}"
	else
		REPLY="$2"
	fi
}
