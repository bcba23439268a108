#!/usr/bin/env bash
# make patches: write the patched tree's commits on top of pristine 7.3 as an upstream-style series,
# with a cover letter from patches/msg/cover-letter.txt (its first paragraph is the subject).
#
#   export-patches.sh [<dest>]    default out/patches/
#
# make lint checks what this writes (checkpatch.sh).
. "$(dirname "$0")/common.sh"
dest=${1:-$RB_REPO/out/patches}
cover=$RB_REPO/patches/msg/cover-letter.txt
[ -f "$cover" ] || rb_die "no cover letter at ${cover#"$RB_REPO"/}"
branch=$(git -C "$RB_SRC" symbolic-ref --short HEAD) || rb_die "the patched tree is not on a branch"
rm -rf "$dest"
mkdir -p "$dest"
# format-patch takes the cover letter from the branch description; setting it for this one command
# leaves the tree's configuration alone. The cover letter is signed by the committer: make that the
# series' author, not whoever runs this.
GIT_COMMITTER_NAME='rballoon developers' GIT_COMMITTER_EMAIL=rballoon@localhost \
	git -C "$RB_SRC" -c "branch.$branch.description=$(cat "$cover")" format-patch -q --no-signature \
	--cover-letter --cover-from-description=subject -o "$dest" pristine..HEAD
files=("$dest"/*)
rb_log "${#files[@]} files in $dest:"
ls "$dest" >&2
