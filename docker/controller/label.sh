#!/bin/sh
# Optional. Adds the release labels (io.kiisrv.release.*) to controller images. The
# server needs no labels: without them it reads /controller/kiisrv-version.json out of
# the image once per image id (a container created and removed, never started) and
# remembers it (config.db). With them it reads the details with the image list, and
# they win over the file. The values are what the image's own build computed with git;
# a Dockerfile LABEL cannot compute them, so they are read back here and put on a
# one-instruction image on top (no layer, same tag).
#
#   docker/controller/label.sh kiisrv-controller-057:latest [more images...]
set -eu
for image in "$@"; do
    json=$(docker run --rm --network none --entrypoint cat "$image" /controller/kiisrv-version.json)
    field() { printf '%s' "$json" | python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
    printf 'FROM %s\nLABEL io.kiisrv.release.tag="%s" io.kiisrv.release.commit="%s" io.kiisrv.release.date="%s" io.kiisrv.release.hash="%s"\n' \
        "$image" "$(field tag)" "$(field commit)" "$(field date)" "$(field hash)" \
        | docker build -q -t "$image" - >/dev/null
    echo "$image: labelled $(field tag), $(field commit) commits"
done
