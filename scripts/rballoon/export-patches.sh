#!/usr/bin/env bash
# make patches: write the patched tree's commits on top of pristine 7.3 as an upstream-style series.
. "$(dirname "$0")/common.sh"
dest=${1:-$RB_REPO/out/patches}
rm -rf "$dest"
mkdir -p "$dest"
git -C "$RB_SRC" format-patch -q --no-signature --cover-letter -o "$dest" pristine..HEAD
rb_log "$(ls "$dest" | wc -l) files in $dest:"
ls "$dest" >&2
