# Sourced by build.sh (each request) and warm.sh (image build): one environment for both,
# so that a build started from a warm tree and one started from nothing see the same
# paths, names and date, and produce the same firmware bytes.
# shellcheck shell=bash

CONTROLLER_DIR="${CONTROLLER_DIR:-/controller}"
# Fixed, because the build folder's path ends up in the compiler flags, the ninja files
# and the debug info: a warm tree is only reusable at the path it was built at.
BUILD_ROOT=/tmp/kiisrv-build
WARM_DIR="${WARM_DIR:-/warm}"
# kiisrv's rules in the image (src/kiisrv/controller/): which tree, and the objects.
WARMTREE=/usr/local/lib/kiisrv/warmtree.py
OBJECTS=/usr/local/lib/kiisrv/objects.py

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

# canonical_maps <kll dir>: the request's own maps renamed layer-0, layer-1, ... (layer
# names are compiled into the firmware: a tree is only reusable by requests that use the
# same names). The rule is warmtree.py's (canonical_maps, unit-tested), as the server's
# warm list uses it. Sets CANON (request stem -> layer-<n>), CANON_DEFAULT,
# CANON_PARTIAL and MAPS.
canonical_maps() {
	local out
	out="$(python3 "$WARMTREE" canon "$1")" || return 1
	declare -gA CANON=()
	eval "$out"
	MAPS="${CANON_DEFAULT}|${CANON_PARTIAL}"
}
