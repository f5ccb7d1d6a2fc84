#!/bin/bash
# Image build step shared by the real and the test-double controller images: records
# the version details the server reads, installs the Keyboards environment and (for
# the real image) the KLL layout cache, so builds need no network.
set -euxo pipefail
tag="$1" kll_cache="$2" keyboards_extra="${3:-}"

cd /controller
# Builds run as an unprivileged uid: let git read this root-owned checkout (the build
# asks it for the revision), and keep our own files out of the firmware's "tree status".
git config --system --add safe.directory /controller
printf 'kiisrv-version.json\nKeyboards/Pipfile.lock\nKeyboards/.venv/\n' >> .git/info/exclude
printf '{"tag": "%s", "hash": "%s", "commit": %s, "date": "%s"}\n' \
	"$tag" "$(git rev-parse "$tag")" "$(git rev-list --count "$tag")" \
	"$(git log -1 --pretty=%ai "$tag")" > /controller/kiisrv-version.json
cat /controller/kiisrv-version.json

cd /controller/Keyboards
pipenv install
if [ -n "$keyboards_extra" ]; then
	# shellcheck disable=SC2086
	pipenv run pip install --no-cache-dir $keyboards_extra
fi

# The KLL layout cache: a pre-made one from the build context (docker/controller/kll-cache/,
# for image builds without GitHub), or downloaded now.
mkdir -p /kll_cache
rm -f /kll_cache/.gitignore
if compgen -G "/kll_cache/*hid-io-layouts*" >/dev/null; then
	echo "using the KLL layout cache from the build context"
elif [ "$kll_cache" = "refresh" ]; then
	pipenv run python3 -m kll --layout-cache-refresh
	mv /tmp/*hid-io-layouts* /kll_cache/
fi
chmod -R a+rX /controller /kll_cache
# The keyboard scripts write into /controller (ctags' tags, compile_commands.json, the
# git index): the build uid owns it. Done in the layer that created the files.
chown -R "${BUILD_UID:-1000}:${BUILD_UID:-1000}" /controller
