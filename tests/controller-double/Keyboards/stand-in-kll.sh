#!/bin/bash
# TEST DOUBLE of the KLL compiler step: the generated headers are the layers' text, so
# a firmware built from stale headers shows it. Also fails, sleeps or pads on demand.
set -euo pipefail
scan=""
if [ "${1:-}" = --base ]; then scan="$2"; shift 2; fi
fail() { echo "kll (test double): $*" >&2; exit 1; }
if [ -z "${KIISRV_WARMING:-}" ]; then  # image builds have a network; requests must not
	for f in /sys/class/net/*; do
		[ "$(basename "$f")" = "lo" ] || fail "the build container has a network interface: $(basename "$f")"
	done
fi
sleep_for="$(grep -ho 'KIISRV_TEST_SLEEP=[0-9]*' "$@" | head -n1 | cut -d= -f2 || true)"
if [ -n "$sleep_for" ]; then
	echo "kll (test double): sleeping ${sleep_for}s as asked"
	sleep "$sleep_for"
fi
if grep -q KIISRV_TEST_OUT_LINK "$@"; then  # a hostile build: a link to / in its output
	ln -sfn / "${OUT_DIR:?}/escape.zip"
	echo "kll (test double): left a symlink to / in ${OUT_DIR} as asked"
fi
if grep -q KIISRV_TEST_FAIL "$@"; then
	fail "error: failing as asked by KIISRV_TEST_FAIL"
fi
bad="$(grep -n 'U"NOTAKEY"' "$@" | head -n1 || true)"
if [ -n "$bad" ]; then  # what the real KLL compiler prints for an unknown key name
	file="${bad%%:*}" rest="${bad#*:}"
	echo "ERROR: 'NOTAKEY' (Layout(name=default)) is an invalid USB HID Code Lookup..."
	echo "ERROR: OperationSpecificsStage:parse -> /tmp/kll/tmp@['${file%.kll}']_processed.kll:${rest%%:*}"
	exit 1
fi
echo "kll (test double): maps ${*%.kll}"
{ echo "/* scancode map: ${scan} */"; cat "$@"; } > generatedKeymap.h
echo "/* test double: $# layers */" > kll_defs.h
printf '{"test_double": true, "layers": %d}\n' "$#" > kll.json
touch .kiisrv-kll-ok  # as the real image's bin/kll does
